// Temporary names beside a target, and directory fsync.
#include "temporary.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace peft::io::detail {

std::filesystem::path temporary_beside(const std::filesystem::path& target, const char* kind) {
  static std::atomic<uint64_t> counter{0};
  return target.parent_path() / ("." + target.filename().string() + "." + kind + "-" +
                                 std::to_string(::getpid()) + "-" + std::to_string(counter++));
}

void sync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace peft::io::detail
