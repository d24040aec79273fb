// Names and housekeeping shared by the atomic writers (write_file_atomically, StagedDirectory).
#pragma once

#include <filesystem>
#include <string>

namespace peft::io::detail {

// ".<name>.<kind>-<pid>-<n>" beside `target`: unique in this process; the pid tells a later run
// whether the writer is still alive (remove_stale_temporaries).
std::filesystem::path temporary_beside(const std::filesystem::path& target, const char* kind);

// fsync of a directory, so that a rename in it survives a power loss. Some file systems refuse
// it (EINVAL): nothing more can be done there.
void sync_directory(const std::filesystem::path& dir);

}  // namespace peft::io::detail
