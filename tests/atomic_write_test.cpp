// The one atomic, durable write path (peft::io::write_file_atomically): complete replacement, no
// temporary files left behind, a failing writer keeps the old file, errors name the path.
#include "peft/io/atomic_write.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <stdexcept>

#include "peft/error.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using peft::test::dir_entries;

TEST(AtomicWrite, ReplacesTheFileWholeAndLeavesNoTemporaryFile) {
  peft::test::TempDir dir;
  const std::string path = dir.str("a.json");
  peft::io::write_file_atomically(path, "first", "test");
  peft::io::write_file_atomically(path, std::string(100000, 'x'), "test");
  EXPECT_EQ(peft::test::read_file(path), std::string(100000, 'x'));
  peft::io::write_file_atomically(
      path,
      [](const peft::io::ByteSink& sink) {
        sink("ab", 2);
        sink("cd", 2);
      },
      "test");
  EXPECT_EQ(peft::test::read_file(path), "abcd");
  EXPECT_EQ(dir_entries(dir.path()), std::vector<std::string>{"a.json"});
  peft::io::copy_file_atomically(path, dir.str("b.json"), "test");
  EXPECT_EQ(peft::test::read_file(dir.str("b.json")), "abcd");
}

TEST(AtomicWrite, AFailingWriterKeepsTheOldFile) {
  peft::test::TempDir dir;
  const std::string path = dir.str("a.bin");
  peft::io::write_file_atomically(path, "old", "test");
  EXPECT_THROW(peft::io::write_file_atomically(
                   path,
                   [](const peft::io::ByteSink& sink) {
                     sink("new, half written", 17);
                     throw std::runtime_error("device copy failed");
                   },
                   "test"),
               std::runtime_error);
  EXPECT_EQ(peft::test::read_file(path), "old");
  EXPECT_EQ(dir_entries(dir.path()), std::vector<std::string>{"a.bin"});
}

TEST(AtomicWrite, ErrorsNameThePathAndTheComponent) {
  peft::test::TempDir dir;
  fs::create_directories(dir.path() / "sub" / "inner");
  for (const std::string& path : {dir.str("missing/x"), dir.str("sub")}) {
    try {
      peft::io::write_file_atomically(path, "x", "component");
      ADD_FAILURE() << "no error for " << path;
    } catch (const peft::Error& e) {
      EXPECT_EQ(e.component(), "component");
      EXPECT_NE(std::string(e.what()).find("\"" + path + "\""), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(peft::io::copy_file_atomically(dir.str("none"), dir.str("y"), "component"),
               peft::FormatError);
  EXPECT_EQ(dir_entries(dir.path()), std::vector<std::string>{"sub"});
}

}  // namespace
