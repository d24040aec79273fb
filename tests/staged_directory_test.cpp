// io::StagedDirectory (folders published whole, in one rename) and remove_stale_temporaries (what a
// killed writer left is removed by the next one, what a live writer holds is not).
#include "peft/io/staged_directory.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "peft/error.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using peft::test::dir_entries;

using peft::test::read_file;
using peft::test::write_file;

// The pid of a process that has exited (and been reaped): no process runs under it.
long dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  return child;
}

TEST(StagedDirectory, NothingAppearsBeforePublishAndAnUnpublishedStageLeavesNoTrace) {
  peft::test::TempDir tmp;
  const fs::path target = tmp.path() / "out";
  {
    peft::io::StagedDirectory dir(target.string(), "test");
    write_file((dir.path() / "a.txt").string(), "new");
    EXPECT_FALSE(fs::exists(target));
    EXPECT_EQ(dir.path().parent_path(), target.parent_path());
  }  // dropped without publish (the writer failed)
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(dir_entries(tmp.path()).empty());
}

TEST(StagedDirectory, PublishCreatesOrReplacesTheFolderKeepingOnlyWhatKeepSelects) {
  peft::test::TempDir tmp;
  const fs::path target = tmp.path() / "out";
  {
    peft::io::StagedDirectory dir(target.string(), "test");
    write_file((dir.path() / "model.bin").string(), "v1");
    write_file((dir.path() / "stale.bin").string(), "v1");
    dir.publish();
  }
  EXPECT_EQ(read_file((target / "model.bin").string()), "v1");
  write_file((target / "notes.txt").string(), "mine");
  write_file((target / "sub" / "deep.txt").string(), "mine too");
  {
    peft::io::StagedDirectory dir(target.string(), "test");
    write_file((dir.path() / "model.bin").string(), "v2");
    dir.publish([](const std::string& name) { return name != "stale.bin"; });
  }
  EXPECT_EQ(dir_entries(target), (std::vector<std::string>{"model.bin", "notes.txt", "sub"}));
  EXPECT_EQ(read_file((target / "model.bin").string()), "v2");
  EXPECT_EQ(read_file((target / "notes.txt").string()), "mine");
  EXPECT_EQ(read_file((target / "sub" / "deep.txt").string()), "mine too");
  EXPECT_EQ(dir_entries(tmp.path()), (std::vector<std::string>{"out"}));  // the old folder is gone
  {
    peft::io::StagedDirectory dir(target.string(), "test");  // no keep: a checkpoint's way
    write_file((dir.path() / "model.bin").string(), "v3");
    dir.publish();
  }
  EXPECT_EQ(dir_entries(target), (std::vector<std::string>{"model.bin"}));
  {
    peft::io::StagedDirectory dir(target.string() + "/", "test");  // a trailing slash: same folder
    write_file((dir.path() / "model.bin").string(), "v4");
    dir.publish();
  }
  EXPECT_EQ(read_file((target / "model.bin").string()), "v4");
  EXPECT_EQ(dir_entries(tmp.path()), (std::vector<std::string>{"out"}));
}

TEST(StagedDirectory, ASymlinkedTargetKeepsItsLinkAndAFileTargetIsRefused) {
  peft::test::TempDir tmp;
  fs::create_directory(tmp.path() / "real");
  fs::create_directory_symlink(tmp.path() / "real", tmp.path() / "link");
  {
    peft::io::StagedDirectory dir((tmp.path() / "link").string(), "test");
    write_file((dir.path() / "x").string(), "1");
    dir.publish();
  }
  EXPECT_TRUE(fs::is_symlink(tmp.path() / "link"));
  EXPECT_EQ(read_file((tmp.path() / "real" / "x").string()), "1");
  write_file((tmp.path() / "file").string(), "keep me");
  try {
    peft::io::StagedDirectory dir((tmp.path() / "file").string(), "test");
    ADD_FAILURE() << "a file as the folder target was accepted";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a folder"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file((tmp.path() / "file").string()), "keep me");
}

TEST(StagedDirectory, StaleTemporariesOfDeadWritersGoAndThoseOfLiveOnesStay) {
  peft::test::TempDir tmp;
  const long dead = dead_pid();
  const std::string live = std::to_string(::getppid());  // the test runner's parent: alive
  const fs::path d = tmp.path();
  write_file((d / (".adapter_model.safetensors.tmp-" + std::to_string(dead) + "-0")).string(), "x");
  fs::create_directory(d / (".checkpoint-4.tmp-" + std::to_string(dead) + "-3"));
  write_file((d / (".model.safetensors.tmp-" + live + "-1")).string(), "in use");
  write_file((d / ".notes.tmp-x-1").string(), "not ours");
  write_file((d / "user.tmp-1-2").string(), "not ours");
  // A folder a killed publish had moved aside, with nothing in its place: restored.
  write_file((d / (".merged.old-" + std::to_string(dead) + "-0") / "config.json").string(), "{}");
  // One with a new folder in its place: removed.
  write_file((d / (".ckpt.old-" + std::to_string(dead) + "-1") / "a").string(), "old");
  write_file((d / "ckpt" / "a").string(), "new");
  EXPECT_EQ(peft::io::remove_stale_temporaries(d.string()), 4);
  EXPECT_EQ(dir_entries(d),
            (std::vector<std::string>{".model.safetensors.tmp-" + live + "-1", ".notes.tmp-x-1",
                                      "ckpt", "merged", "user.tmp-1-2"}));
  EXPECT_EQ(read_file((d / "merged" / "config.json").string()), "{}");
  EXPECT_EQ(read_file((d / "ckpt" / "a").string()), "new");
  // `only` limits the clean-up to one target's leftovers.
  write_file((d / (".a.tmp-" + std::to_string(dead) + "-0")).string(), "x");
  write_file((d / (".b.tmp-" + std::to_string(dead) + "-0")).string(), "x");
  EXPECT_EQ(peft::io::remove_stale_temporaries(d.string(), "a"), 1);
  EXPECT_TRUE(fs::exists(d / (".b.tmp-" + std::to_string(dead) + "-0")));
}

}  // namespace
