// Folders that appear whole or not at all: a checkpoint, a merged model. The folder is built beside
// its final place and published with one atomic rename, so a reader, or the file system after a
// crash or kill -9, sees the previous folder (or none) or the complete new one, never a mix.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace peft::io {

class StagedDirectory {
 public:
  // Which entries (names directly inside the folder) of an existing target the new folder keeps
  // (hard links, no copies): files the writer does not own, such as a user's notes.
  using Keep = std::function<bool(const std::string& name)>;

  // Creates the staging folder ".<name>.tmp-<pid>-<n>" beside `target` (whose parent is created;
  // a symlinked target is resolved, so the link stays and its folder is replaced), after removing
  // what killed writers of the same target left there (remove_stale_temporaries).
  StagedDirectory(const std::string& target, const char* component);
  ~StagedDirectory();  // removes the staging folder unless it was published
  StagedDirectory(const StagedDirectory&) = delete;
  StagedDirectory& operator=(const StagedDirectory&) = delete;

  // Where to write the folder's files.
  const std::filesystem::path& path() const { return staging_; }

  // Publishes the staged folder as the target: the entries `keep` accepts that the staged folder
  // lacks are linked in, then the two folders are swapped in one renameat2(RENAME_EXCHANGE) (on a
  // file system without it: the old folder is renamed aside first, and remove_stale_temporaries
  // puts it back if the process dies in between), the parent directory is fsync'ed and the
  // previous folder removed. Without `keep`, nothing of the previous folder stays.
  void publish(const Keep& keep = nullptr);

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  const char* component_;
  bool published_ = false;
};

// Removes what a killed writer left in `dir`: temporary files and staging folders
// (".<name>.tmp-<pid>-<n>") of processes that no longer run, and restores a folder that a killed
// publish had moved aside (".<name>.old-<pid>-<n>") when nothing took its place. Entries of live
// processes are left alone. With `only`, just the entries of the target named `only`. Returns how
// many entries it removed or restored.
int remove_stale_temporaries(const std::string& dir, const std::string& only = "");

}  // namespace peft::io
