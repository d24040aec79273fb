// Bounded reads of regular files only.
#include "peft/io/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "peft/error.h"

namespace peft::io {
namespace {

std::string describe_mode(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

}  // namespace

RegularFile::RegularFile(const std::filesystem::path& path, const std::string& component) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    throw FormatError(component, "cannot open \"" + path.string() +
                                     "\": " + std::generic_category().message(err) +
                                     (err == ELOOP ? " (a symlink loop)" : "") +
                                     "; expected a readable regular file (hint: check the path)");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const mode_t mode = st.st_mode;
    ::close(fd);
    throw FormatError(component, "\"" + path.string() + "\" is " + describe_mode(mode) +
                                     "; expected a regular file (hint: pass the file itself)");
  }
  // Reads block as usual from here on (O_NONBLOCK only matters for FIFOs and devices).
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) (void)::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  fd_ = fd;
  size_ = static_cast<uint64_t>(st.st_size);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

int RegularFile::release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

std::string read_file(const std::filesystem::path& path, const std::string& component,
                      uint64_t max_bytes) {
  RegularFile file(path, component);
  if (file.size() > max_bytes) {
    throw FormatError(component, "\"" + path.string() + "\" is " + std::to_string(file.size()) +
                                     " bytes; expected at most " + std::to_string(max_bytes) +
                                     " (hint: is this the right file?)");
  }
  std::string out(static_cast<size_t>(file.size()), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(file.fd(), out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw FormatError(component, "cannot read \"" + path.string() +
                                       "\": " + std::generic_category().message(errno) +
                                       " (hint: check the file's permissions)");
    }
    if (n == 0) break;  // the file shrank while being read
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

}  // namespace peft::io
