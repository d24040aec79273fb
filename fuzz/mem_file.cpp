#include "mem_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>

namespace peft::fuzz {

MemFile::MemFile(std::string_view bytes) {
  fd_ = ::memfd_create("peft-fuzz", MFD_CLOEXEC);
  if (fd_ < 0) std::abort();  // the harness itself failed, not the code under test
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() { ::close(fd_); }

}  // namespace peft::fuzz
