// The one way peft.cpp reads a file a stranger may have made: bounded, and never blocking on
// something that is not a regular file (a FIFO, a device, a directory, a symlink loop).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace peft::io {

// Text files (configs, tokenizers, chat templates, data sets) larger than this are refused.
inline constexpr uint64_t kMaxTextFileBytes = uint64_t{4} << 30;  // 4 GiB

// An open regular file: its descriptor (closed by the destructor) and size.
class RegularFile {
 public:
  // Opens `path` for reading without blocking (O_NONBLOCK, so a FIFO cannot hang the open), then
  // checks it is a regular file. Throws peft::FormatError(component) naming the path, what was
  // found and a hint when it is missing, unreadable, a symlink loop, or not a regular file.
  RegularFile(const std::filesystem::path& path, const std::string& component);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  // Hands the descriptor to the caller (who closes it).
  int release();

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

// Reads all of a regular file (see RegularFile); FormatError naming the path when it is larger
// than `max_bytes`.
std::string read_file(const std::filesystem::path& path, const std::string& component,
                      uint64_t max_bytes = kMaxTextFileBytes);

}  // namespace peft::io
