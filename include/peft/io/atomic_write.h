// The one way peft.cpp writes a file: atomically and durably. Every writer (safetensors,
// adapter_config.json, the model card, a saved model's config.json, the loss plot, trainer
// checkpoints, files the CLI copies) goes through it.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace peft::io {

// Appends bytes to the file being written.
using ByteSink = std::function<void(const void* data, size_t size)>;

// Writes `path` so that a reader, or the file system after a crash or kill -9, sees either the
// previous file (or no file) or the complete new one, never a mix: the bytes go to a uniquely named
// temporary file in the same directory
// (".<name>.tmp-<pid>-<n>", created with O_EXCL), which is fsync'ed and renamed onto `path`; then
// the directory is fsync'ed so the rename itself survives a power loss. `write` receives the sink;
// when it (or any step) throws, the temporary file is removed and peft::Error(component) is thrown
// naming `path`, the failing step and the OS reason, with a hint. The parent directory must exist.
void write_file_atomically(const std::string& path,
                           const std::function<void(const ByteSink& sink)>& write,
                           const char* component);
void write_file_atomically(const std::string& path, std::string_view contents,
                           const char* component);
// Copies the file `from` onto `to` through write_file_atomically (FormatError naming `from` when it
// cannot be read).
void copy_file_atomically(const std::string& from, const std::string& to, const char* component);

}  // namespace peft::io
