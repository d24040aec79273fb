// Atomic, durable file writes: temporary file in the target's directory, write, fsync, rename,
// fsync the directory.
#include "peft/io/atomic_write.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "peft/error.h"
#include "peft/io/crash_point.h"
#include "temporary.h"

namespace fs = std::filesystem;

namespace peft::io {
namespace {

[[noreturn]] void fail(const char* component, const std::string& path, const std::string& what,
                       int err) {
  throw Error(
      component,
      "cannot write \"" + path + "\": " + what + ": " + std::generic_category().message(err) +
          "; expected an existing, writable directory with free space (hint: create the directory "
          "first, or choose another path)");
}

void write_all(int fd, const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw std::system_error(n < 0 ? errno : EIO, std::generic_category(),
                              "writing the temporary file");
    p += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

void write_file_atomically(const std::string& path,
                           const std::function<void(const ByteSink& sink)>& write,
                           const char* component) {
  const fs::path target(path);
  if (path.empty() || !target.has_filename()) fail(component, path, "not a file path", EINVAL);
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = detail::temporary_beside(target, "tmp").string();
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) fail(component, path, "cannot create a temporary file next to it", errno);
  crash_point("write:opened");
  try {
    bool first = true;
    write([fd, &first](const void* data, size_t size) {
      if (first && size > 1) {  // a kill in the middle of the data, for the crash tests
        first = false;
        write_all(fd, data, size / 2);
        crash_point("write:partial");
        write_all(fd, static_cast<const char*>(data) + size / 2, size - size / 2);
        return;
      }
      write_all(fd, data, size);
    });
    if (::fsync(fd) != 0)
      throw std::system_error(errno, std::generic_category(), "flushing the temporary file");
    const int rc = ::close(fd);
    fd = -1;
    if (rc != 0)
      throw std::system_error(errno, std::generic_category(), "closing the temporary file");
    crash_point("write:synced");
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw std::system_error(errno, std::generic_category(),
                              "renaming the temporary file into place");
    }
    crash_point("write:renamed");
  } catch (const std::system_error& e) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(
        component,
        "cannot write \"" + path + "\": " + e.what() +
            " (hint: check that the directory is writable, has free space, and that the path is "
            "not a directory)");
  } catch (...) {  // the caller's writer failed (a device copy, an encoding error): keep its error
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  detail::sync_directory(target.parent_path());
}

void write_file_atomically(const std::string& path, std::string_view contents,
                           const char* component) {
  write_file_atomically(
      path, [&](const ByteSink& sink) { sink(contents.data(), contents.size()); }, component);
}

void copy_file_atomically(const std::string& from, const std::string& to, const char* component) {
  std::ifstream in(from, std::ios::binary);
  PEFT_CHECK(in.good(), FormatError, component,
             "cannot read \"" << from << "\" (hint: check that it exists and is readable)");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  PEFT_CHECK(!in.bad(), FormatError, component, "cannot read \"" << from << "\"");
  write_file_atomically(to, bytes.str(), component);
}

}  // namespace peft::io
