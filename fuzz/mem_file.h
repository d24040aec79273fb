// An input as a file without touching the disk: a memfd (a regular file in memory) reached through
// /proc/self/fd/N, so the readers run exactly as they do on a real path.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace peft::fuzz {

class MemFile {
 public:
  explicit MemFile(std::string_view bytes);
  ~MemFile();
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace peft::fuzz
