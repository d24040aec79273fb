// kill -9 at named moments (PEFT_CRASH_AT, io/crash_point.h) of `peft train --save-every 2` and
// `peft merge`: every checkpoint folder present is complete and loads, what a killed run left
// half-written is ignored and cleaned by the next run, resuming ends bit-identical to an
// uninterrupted run, and a merge's output is the previous folder or the complete new one.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using peft::test::peft_cli;
using peft::test::q;
using peft::test::read_file;

const fs::path kDemo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo";

// `resume`: a checkpoint folder to continue from (it holds the adapter's config).
std::string train_command(const fs::path& out, const fs::path& resume = {}) {
  return "train --model " + q(kDemo / "model") + " --data " + q(kDemo / "data" / "train.jsonl") +
         (resume.empty() ? " --config " + q(kDemo / "lora_config.json")
                         : " --resume " + q(resume)) +
         " --out " + q(out) + " --steps 8 --batch-size 4 --save-every 2 --lr 3e-3 --seed 7" +
         " --no-sample";
}

bool is_temporary(const std::string& name) {
  return name.size() > 1 && name[0] == '.' &&
         (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos);
}

std::vector<std::string> temporaries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (is_temporary(e.path().filename().string())) out.push_back(e.path().string());
  return out;
}

// Every checkpoint-<step> folder is complete: its files parse and agree with its name. Returns
// the highest step (0 when there is none).
int64_t check_checkpoints(const fs::path& out, const std::string& moment) {
  int64_t last = 0;
  if (!fs::exists(out)) return last;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0) continue;
    const int64_t step = std::stoll(name.substr(11));
    SCOPED_TRACE(moment + ": " + name);
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors",
                          "optimizer.safetensors", "trainer_state.json"}) {
      EXPECT_TRUE(fs::exists(e.path() / f)) << f;
    }
    EXPECT_NO_THROW(peft::io::load_safetensors((e.path() / "adapter_model.safetensors").string()));
    EXPECT_NO_THROW(peft::io::load_safetensors((e.path() / "optimizer.safetensors").string()));
    const auto state = nlohmann::json::parse(read_file((e.path() / "trainer_state.json").string()));
    EXPECT_EQ(state.at("global_step").get<int64_t>(), step);
    EXPECT_TRUE(
        nlohmann::json::parse(read_file((e.path() / "adapter_config.json").string())).is_object());
    last = std::max(last, step);
  }
  return last;
}

// Every file under `dir` (relative name -> bytes).
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file())
      out[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  return out;
}

// The training log, if present, is whole: one JSON object per line.
void check_log(const fs::path& out, const std::string& moment) {
  const fs::path log = out / "train_log.jsonl";
  if (!fs::exists(log)) return;
  std::istringstream lines(read_file(log.string()));
  for (std::string line; std::getline(lines, line);)
    EXPECT_TRUE(nlohmann::json::accept(line)) << moment << ": " << line;
}

TEST(CrashSafety, TrainKilledAtTenMomentsResumesToTheSameAdapter) {
  peft::test::TempDir tmp;
  const fs::path ref = tmp.path() / "ref";
  const auto r = peft_cli(train_command(ref));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string ref_adapter = read_file((ref / "adapter_model.safetensors").string());
  ASSERT_FALSE(ref_adapter.empty());
  EXPECT_TRUE(temporaries(ref).empty());
  // Before, during and after the writes of the first and second checkpoints (writes per
  // checkpoint: adapter weights, adapter config, model card, optimizer state, trainer state, log).
  const std::vector<std::string> moments = {
      "train:step@1",            // before any checkpoint
      "checkpoint:begin@1",      // nothing of checkpoint-2 written yet
      "write:opened@1",          // checkpoint-2's adapter weights: empty temporary file
      "write:partial@1",         // ... half written
      "write:synced@2",          // adapter config complete in the temporary, not renamed
      "write:renamed@4",         // optimizer state in place inside the staging folder
      "checkpoint:adapter@2",    // checkpoint-4 half staged
      "publish:staged@2",        // checkpoint-4 staged, not published
      "checkpoint:published@2",  // checkpoint-4 published, the log not yet
      "write:partial@12",        // checkpoint-4's log half written (checkpoint-2 stays)
      "checkpoint:done@3",       // after checkpoint-6
      "train:step@8",            // the last update, before the final save
  };
  for (const std::string& moment : moments) {
    SCOPED_TRACE(moment);
    const fs::path out = tmp.path() / ("run-" + std::to_string(&moment - moments.data()));
    const auto killed = peft_cli(train_command(out), "PEFT_CRASH_AT=" + moment);
    ASSERT_EQ(killed.signal, SIGKILL) << "the run was not killed at " << moment << "\n"
                                      << killed.output;
    const int64_t last = check_checkpoints(out, moment);
    check_log(out, moment);
    // Resume from the newest checkpoint (or start again when there is none).
    const auto again = peft_cli(
        train_command(out, last > 0 ? out / ("checkpoint-" + std::to_string(last)) : fs::path()));
    ASSERT_EQ(again.code, 0) << again.output;
    EXPECT_EQ(read_file((out / "adapter_model.safetensors").string()), ref_adapter)
        << "resumed from checkpoint-" << last << " and ended with another adapter";
    EXPECT_EQ(check_checkpoints(out, moment), 8);
    check_log(out, moment);
    EXPECT_EQ(temporaries(out), std::vector<std::string>{});
  }
}

TEST(CrashSafety, MergeKilledLeavesThePreviousFolderOrTheCompleteNewOne) {
  peft::test::TempDir tmp;
  const fs::path base = fs::path(peft::test::fixture("golden/model-llama/base"));
  const fs::path adapter = fs::path(peft::test::fixture("golden/model-llama/adapter"));
  const std::string merge = "merge --model " + q(base) + " --adapter " + q(adapter) + " --out ";
  const auto r = peft_cli(merge + q(tmp.path() / "ref"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto merged = snapshot(tmp.path() / "ref");
  merged["notes.txt"] = "mine";
  for (const std::string moment :
       {"write:opened@1", "write:partial@1", "write:renamed@1", "publish:staged", "publish:linked",
        "publish:exchanged", "publish:done"}) {
    SCOPED_TRACE(moment);
    const fs::path out = tmp.path() / "out";
    fs::remove_all(out);
    // The previous folder: a model and a file of the user's.
    fs::create_directories(out);
    fs::copy_file(base / "model.safetensors", out / "model.safetensors");
    fs::copy_file(base / "config.json", out / "config.json");
    peft::test::write_file((out / "notes.txt").string(), "mine");
    const auto previous = snapshot(out);
    ASSERT_NE(previous, merged);
    const auto killed = peft_cli(merge + q(out), "PEFT_CRASH_AT=" + moment);
    ASSERT_EQ(killed.signal, SIGKILL) << killed.output;
    const auto now = snapshot(out);  // all files as they were, or all as the merge writes them
    EXPECT_TRUE(now == previous || now == merged) << "a mix of the previous and the new folder";
    // The next merge cleans up after the killed one and completes.
    const auto again = peft_cli(merge + q(out));
    ASSERT_EQ(again.code, 0) << again.output;
    EXPECT_EQ(snapshot(out), merged);
    EXPECT_EQ(temporaries(tmp.path()), std::vector<std::string>{});
  }
}

}  // namespace
