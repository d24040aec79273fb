// Folders published in one atomic rename, and clean-up after killed writers.
#include "peft/io/staged_directory.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <system_error>

#include "peft/error.h"
#include "peft/io/crash_point.h"
#include "temporary.h"

namespace fs = std::filesystem;

namespace peft::io {
namespace {

[[noreturn]] void fail(const char* component, const fs::path& target, const std::string& what,
                       const std::error_code& ec) {
  throw Error(component, "cannot publish the folder \"" + target.string() + "\": " + what + ": " +
                             ec.message() +
                             " (hint: check that its parent directory is writable and has free "
                             "space, and that the path is not a file)");
}

// Recreates `from` inside `to` with hard links (the data is shared, never copied, and the old
// folder keeps its own names until it is removed); a file system without hard links gets copies.
void link_tree(const fs::path& from, const fs::path& to) {
  const fs::file_status st = fs::symlink_status(from);
  if (fs::is_symlink(st)) {
    fs::copy_symlink(from, to);
  } else if (fs::is_directory(st)) {
    fs::create_directory(to);
    for (const auto& e : fs::directory_iterator(from))
      link_tree(e.path(), to / e.path().filename());
  } else if (::link(from.c_str(), to.c_str()) != 0) {
    fs::copy_file(from, to);
  }
}

// The pid in ".<name>.<kind>-<pid>-<n>", or -1 when `file` is not such a name.
long writer_pid(const std::string& file, const std::string& kind, std::string* name) {
  const std::string mark = "." + kind + "-";
  const size_t at = file.rfind(mark);
  if (file.size() < 2 || file[0] != '.' || at == std::string::npos || at < 1) return -1;
  const std::string rest = file.substr(at + mark.size());
  const size_t dash = rest.find('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) return -1;
  for (size_t i = 0; i < rest.size(); ++i)
    if (i != dash && (rest[i] < '0' || rest[i] > '9')) return -1;
  if (name) *name = file.substr(1, at - 1);
  return std::strtol(rest.substr(0, dash).c_str(), nullptr, 10);
}

bool process_gone(long pid) {
  return pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

StagedDirectory::StagedDirectory(const std::string& target, const char* component)
    : component_(component) {
  std::error_code ec;
  // "out/" names the folder "out": normalize, then drop the trailing separator.
  fs::path t = fs::absolute(fs::path(target), ec).lexically_normal();
  if (!t.has_filename()) t = t.parent_path();
  if (!ec && fs::is_symlink(fs::symlink_status(t))) t = fs::weakly_canonical(t, ec);
  if (ec || !t.has_filename()) fail(component, target, "not a folder path", ec);
  target_ = t;
  if (fs::exists(fs::symlink_status(target_)) && !fs::is_directory(fs::status(target_)))
    fail(component, target_, "it exists and is not a folder",
         std::make_error_code(std::errc::not_a_directory));
  fs::create_directories(target_.parent_path(), ec);
  if (ec) fail(component, target_, "cannot create its parent folder", ec);
  remove_stale_temporaries(target_.parent_path().string(), target_.filename().string());
  for (int attempt = 0; attempt < 100; ++attempt) {
    staging_ = detail::temporary_beside(target_, "tmp");
    if (fs::create_directory(staging_, ec)) return;
    if (ec) fail(component, target_, "cannot create a staging folder beside it", ec);
  }
  fail(component, target_, "no free staging name", std::make_error_code(std::errc::file_exists));
}

StagedDirectory::~StagedDirectory() {
  if (published_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedDirectory::publish(const Keep& keep) {
  crash_point("publish:staged");
  const fs::path parent = target_.parent_path();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target_))) {
    fs::rename(staging_, target_, ec);
    if (ec) fail(component_, target_, "renaming the staging folder into place", ec);
  } else {
    if (keep) {
      for (const auto& e : fs::directory_iterator(target_)) {
        const std::string name = e.path().filename().string();
        if (fs::exists(fs::symlink_status(staging_ / name)) || !keep(name)) continue;
        try {
          link_tree(e.path(), staging_ / name);
        } catch (const fs::filesystem_error& err) {
          fail(component_, target_, "keeping \"" + name + "\" of the previous folder", err.code());
        }
      }
    }
    crash_point("publish:linked");
    if (::renameat2(AT_FDCWD, staging_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
      crash_point("publish:exchanged");  // the staging name now holds the previous folder
    } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
      // Divergence from a true swap on file systems without RENAME_EXCHANGE: the previous folder
      // is moved aside first; remove_stale_temporaries restores it if the process dies here.
      const fs::path aside = detail::temporary_beside(target_, "old");
      fs::rename(target_, aside, ec);
      if (ec) fail(component_, target_, "moving the previous folder aside", ec);
      crash_point("publish:moved-aside");
      fs::rename(staging_, target_, ec);
      if (ec) {
        std::error_code undo;
        fs::rename(aside, target_, undo);
        fail(component_, target_, "renaming the staging folder into place", ec);
      }
      fs::rename(aside, staging_, ec);
    } else {
      fail(component_, target_, "swapping in the staging folder",
           std::error_code(errno, std::generic_category()));
    }
  }
  published_ = true;
  detail::sync_directory(parent);
  fs::remove_all(staging_, ec);  // the previous folder, if any
  crash_point("publish:done");
}

int remove_stale_temporaries(const std::string& dir, const std::string& only) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  int removed = 0;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(dir, ec)) entries.push_back(e.path());
  for (const fs::path& p : entries) {
    const std::string file = p.filename().string();
    std::string name;
    if (!only.empty() && file.rfind("." + only + ".", 0) != 0) continue;
    if (process_gone(writer_pid(file, "tmp", nullptr))) {
      fs::remove_all(p, ec);
      removed += ec ? 0 : 1;
    } else if (process_gone(writer_pid(file, "old", &name))) {
      const fs::path original = p.parent_path() / name;
      if (!fs::exists(fs::symlink_status(original)))
        fs::rename(p, original, ec);
      else
        fs::remove_all(p, ec);
      removed += ec ? 0 : 1;
    }
  }
  if (removed > 0) detail::sync_directory(dir);
  return removed;
}

}  // namespace peft::io
