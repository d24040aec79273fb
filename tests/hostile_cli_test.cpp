// The `peft` command on hostile input (issue 15): outputs never land on or inside an input however
// the path is spelled, a FIFO never hangs a read, nesting that would overflow the stack is an
// error, and a failing run leaves the previous files whole.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "peft/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using peft::test::peft_cli;
using peft::test::q;

const fs::path kGoldenBase = fs::path(peft::test::fixture("golden/model-llama/base"));
const fs::path kGoldenAdapter = fs::path(peft::test::fixture("golden/model-llama/adapter"));
const fs::path kDemoModel = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo" / "model";

// A private copy of a model or adapter folder, so a failing check can never touch the repository's.
fs::path copy_folder(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    fs::copy_file(e.path(), to / e.path().filename());
  return to;
}

TEST(HostileCli, MergeRefusesAnOutputOnOrInsideAnInput) {
  peft::test::TempDir tmp;
  const fs::path model = copy_folder(kGoldenBase, tmp.path() / "model");
  const std::string weights = peft::test::read_file((model / "model.safetensors").string());
  const fs::path adapter = copy_folder(kGoldenAdapter, tmp.path() / "adapter");
  fs::create_symlink(model, tmp.path() / "link");
  for (const std::string& out : {model.string() + "/", (tmp.path() / "link").string(),
                                 (model / "merged").string(), (adapter / "x").string()}) {
    const auto r =
        peft_cli("merge --model " + q(model) + " --adapter " + q(adapter) + " --out " + q(out));
    EXPECT_EQ(r.code, 2) << out << ": " << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find("must never overwrite an input"), std::string::npos) << r.output;
  }
  EXPECT_EQ(peft::test::read_file((model / "model.safetensors").string()), weights);
  EXPECT_FALSE(fs::exists(model / "merged"));
}

TEST(HostileCli, InitRefusesAResidualBaseOnTheModel) {
  peft::test::TempDir tmp;
  const fs::path model = copy_folder(kDemoModel, tmp.path() / "model");
  const std::string weights = peft::test::read_file((model / "model.safetensors").string());
  peft::test::write_file(
      tmp.str("lora.json"),
      R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa"})");
  const auto r = peft_cli("init --model " + q(model) + " --config " + q(tmp.path() / "lora.json") +
                          " --out " + q(tmp.path() / "out") + " --residual-out " + q(model));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--residual-out"), std::string::npos) << r.output;
  EXPECT_EQ(peft::test::read_file((model / "model.safetensors").string()), weights);
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
}

TEST(HostileCli, TrainAndCombineRefuseAnOutputInsideAnInput) {
  peft::test::TempDir tmp;
  const fs::path model = copy_folder(kGoldenBase, tmp.path() / "model");
  peft::test::write_file(tmp.str("data.jsonl"), "{\"input_ids\": [1, 2, 3]}\n");
  const auto t = peft_cli("train --model " + q(model) + " --data " + q(tmp.path() / "data.jsonl") +
                          " --out " + q(model / "adapter") + " --steps 1");
  EXPECT_EQ(t.code, 2) << t.output;
  EXPECT_FALSE(fs::exists(model / "adapter"));
  const fs::path adapter = copy_folder(kGoldenAdapter, tmp.path() / "adapter");
  const auto c = peft_cli("combine --model " + q(model) + " --adapter a=" + q(adapter) +
                          " --weights 1 --type linear --out " + q(adapter));
  EXPECT_EQ(c.code, 2) << c.output;
}

TEST(HostileCli, AFailingTrainRunLeavesThePreviousLogWhole) {
  peft::test::TempDir tmp;
  const fs::path out = tmp.path() / "out";
  fs::create_directories(out);
  const std::string old_log = "{\"step\": 1, \"loss\": 1.0}\n";
  peft::test::write_file((out / "train_log.jsonl").string(), old_log);
  // A label outside the 256-token vocabulary fails the run.
  peft::test::write_file(tmp.str("data.jsonl"),
                         "{\"input_ids\": [1, 2, 3], \"labels\": [1, 9999, 3]}\n");
  const auto r = peft_cli("train --model " + q(kGoldenBase) + " --data " +
                          q(tmp.path() / "data.jsonl") + " --out " + q(out) + " --steps 1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_EQ(peft::test::read_file((out / "train_log.jsonl").string()), old_log);
}

TEST(HostileCli, AFifoIsRefusedInsteadOfHanging) {
  peft::test::TempDir tmp;
  // config.json as a FIFO.
  const fs::path model = tmp.path() / "model";
  fs::create_directories(model);
  ASSERT_EQ(::mkfifo((model / "config.json").c_str(), 0600), 0);
  auto r = peft_cli("inspect --model " + q(model));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("FIFO"), std::string::npos) << r.output;
  // model.safetensors as a FIFO.
  const fs::path model2 = tmp.path() / "model2";
  fs::create_directories(model2);
  fs::copy_file(kGoldenBase / "config.json", model2 / "config.json");
  ASSERT_EQ(::mkfifo((model2 / "model.safetensors").c_str(), 0600), 0);
  r = peft_cli("inspect --model " + q(model2));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("FIFO"), std::string::npos) << r.output;
  // adapter_model.safetensors as a FIFO.
  const fs::path adapter = tmp.path() / "adapter";
  fs::create_directories(adapter);
  fs::copy_file(kGoldenAdapter / "adapter_config.json", adapter / "adapter_config.json");
  ASSERT_EQ(::mkfifo((adapter / "adapter_model.safetensors").c_str(), 0600), 0);
  r = peft_cli("inspect --model " + q(kGoldenBase) + " --adapter " + q(adapter));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("FIFO"), std::string::npos) << r.output;
}

TEST(HostileCli, DeepJsonIsAConfigurationErrorOnOneShortLine) {
  peft::test::TempDir tmp;
  const fs::path adapter = tmp.path() / "adapter";
  fs::create_directories(adapter);
  fs::copy_file(kGoldenAdapter / "adapter_model.safetensors",
                adapter / "adapter_model.safetensors");
  peft::test::write_file((adapter / "adapter_config.json").string(),
                         R"({"peft_type": "LORA", "target_modules": )" + std::string(100000, '[') +
                             std::string(100000, ']') + "}");
  const auto r = peft_cli("inspect --model " + q(kGoldenBase) + " --adapter " + q(adapter));
  EXPECT_EQ(r.code, 2) << r.output.substr(0, 500);
  EXPECT_NE(r.output.find("nested more than"), std::string::npos) << r.output.substr(0, 500);
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line";
  EXPECT_LT(r.output.size(), 4000u);
  // A training line nested 100,000 deep.
  peft::test::write_file(tmp.str("deep.jsonl"), "{\"input_ids\": " + std::string(100000, '[') +
                                                    "1" + std::string(100000, ']') + "}\n");
  const auto t =
      peft_cli("train --model " + q(kGoldenBase) + " --data " + q(tmp.path() / "deep.jsonl") +
               " --out " + q(tmp.path() / "out") + " --steps 1");
  EXPECT_EQ(t.code, 1) << t.output.substr(0, 500);
  EXPECT_NE(t.output.find("nested more than"), std::string::npos) << t.output.substr(0, 500);
}

TEST(HostileCli, NonsenseNumbersAreUsageErrorsNotAllNanAdapters) {
  peft::test::TempDir tmp;
  peft::test::write_file(tmp.str("data.jsonl"), "{\"input_ids\": [1, 2, 3]}\n");
  const std::string train = "train --model " + q(kGoldenBase) + " --data " +
                            q(tmp.path() / "data.jsonl") + " --out " + q(tmp.path() / "out");
  for (const std::string bad :
       {" --lr inf", " --lr nan", " --steps 0", " --steps -3", " --max-length -5", " --epochs 0",
        " --threads 100000", " --batch-size 0"}) {
    const auto r = peft_cli(train + bad);
    EXPECT_EQ(r.code, 2) << bad << ": " << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "out" / "adapter_model.safetensors"));
  const auto c =
      peft_cli("combine --model " + q(kGoldenBase) + " --adapter a=" + q(kGoldenAdapter) +
               " --adapter b=" + q(kGoldenAdapter) + " --weights nan,1 --type linear --out " +
               q(tmp.path() / "c"));
  EXPECT_EQ(c.code, 2) << c.output;
  EXPECT_NE(c.output.find("finite"), std::string::npos) << c.output;
  EXPECT_FALSE(fs::exists(tmp.path() / "c" / "adapter_model.safetensors"));
}

TEST(HostileCli, AnExampleLongerThanTheModelIsRefusedWhenReadUnlessTruncated) {
  // The demo model has max_position_embeddings 256; a 50 MB line took 24 GB before this check.
  peft::test::TempDir tmp;
  std::string ids;
  for (int i = 0; i < 300; ++i) ids += (i ? ", " : "") + std::to_string(1 + i % 50);
  peft::test::write_file(tmp.str("long.jsonl"), "{\"input_ids\": [" + ids + "]}\n");
  const std::string train = "train --model " + q(kDemoModel) + " --data " +
                            q(tmp.path() / "long.jsonl") + " --out " + q(tmp.path() / "out") +
                            " --steps 1 --no-sample";
  const auto r = peft_cli(train);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("long.jsonl:1: 300 tokens, more than the model's 256 positions"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("--max-length"), std::string::npos) << r.output;
  const auto ok = peft_cli(train + " --max-length 64");
  EXPECT_EQ(ok.code, 0) << ok.output;
}

TEST(HostileCli, LogitsNamesABadTokenId) {
  peft::test::TempDir tmp;
  peft::io::save_safetensors(
      tmp.str("big.safetensors"),
      std::map<std::string, at::Tensor>{{"input_ids", torch::tensor({{1, 9999}}, torch::kLong)}});
  auto r = peft_cli("logits --model " + q(kGoldenBase) + " --input-ids " +
                    q(tmp.path() / "big.safetensors") + " --out " + q(tmp.path() / "l"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("token id 9999"), std::string::npos) << r.output;
  peft::io::save_safetensors(
      tmp.str("float.safetensors"),
      std::map<std::string, at::Tensor>{{"input_ids", torch::tensor({{1.5, 2.0}}, torch::kFloat)}});
  r = peft_cli("logits --model " + q(kGoldenBase) + " --input-ids " +
               q(tmp.path() / "float.safetensors") + " --out " + q(tmp.path() / "l"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("expected an integer tensor"), std::string::npos) << r.output;
}

}  // namespace
