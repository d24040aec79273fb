// Per-prompt adapters on the command line: `peft generate --prompts FILE` (one JSON line per
// prompt, each prompt with the adapter its line names) equals running each prompt alone with its
// adapter, and `peft logits
// --row-adapters FILE` equals each row alone; errors for a missing adapter name and a wrong row
// count.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::compare;

namespace {

using peft::test::q;

class MixedBatchCli : public ::testing::Test {
 protected:
  peft::test::TempDir tmp;
  fs::path model = tmp.path() / "model";
  fs::path fr = tmp.path() / "fr";
  fs::path de = tmp.path() / "de";

  void SetUp() override {
    const fs::path case_dir = peft::test::fixture("golden/model-llama");
    fs::create_directories(model);
    fs::create_directories(fr);
    for (const auto& e : fs::directory_iterator(case_dir / "base"))
      fs::copy_file(e.path(), model / e.path().filename());
    for (const auto& e : fs::directory_iterator(case_dir / "adapter"))
      fs::copy_file(e.path(), fr / e.path().filename());
    peft::test::write_file((model / "tokenizer.json").string(),
                           peft::test::byte_level_tokenizer().dump());
    torch::manual_seed(2);
    auto m = peft::models::load_pretrained(model.string());
    peft::LoraConfig c;
    c.r = 4;
    c.lora_alpha = 32;
    c.target_modules = std::vector<std::string>{"q_proj", "v_proj", "down_proj"};
    c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
    peft::get_peft_model(m, c)->save_pretrained(de.string());
  }
  std::string adapters() const { return " --adapter fr=" + q(fr) + " --adapter de=" + q(de); }
};

TEST_F(MixedBatchCli, GenerateGivesEveryPromptItsAdapter) {
  const std::string file = tmp.str("prompts.jsonl");
  peft::test::write_file(file,
                         "{\"prompt\": \"Hello\", \"adapter\": \"fr\"}\n"
                         "{\"prompt\": \"Bonjour\", \"adapter\": \"de\"}\n"
                         "Hi there\n");
  const std::string flags = " --max-new-tokens 5 --stop-token 255";
  auto run = peft::test::peft_cli("generate --model " + q(model) + adapters() + " --prompts " +
                                  q(file) + flags);
  ASSERT_EQ(run.code, 0) << run.output;
  std::istringstream lines(run.output);
  std::vector<nlohmann::json> got;
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.front() == '{') got.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(got.size(), 3u) << run.output;
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"fr", " --adapter " + q(fr)}, {"de", " --adapter " + q(de)}, {"__base__", ""}};
  std::vector<std::string> completions;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(got[i]["adapter"], expected[i].first);
    const std::string prompt = got[i]["prompt"];
    auto alone = peft::test::peft_cli("generate --model " + q(model) + expected[i].second +
                                      " --prompt '" + prompt + "'" + flags);
    ASSERT_EQ(alone.code, 0) << alone.output;
    EXPECT_EQ(alone.output, prompt + got[i]["completion"].get<std::string>() + "\n")
        << "prompt " << i;
    completions.push_back(got[i]["completion"]);
  }
  // The adapter matters: "Bonjour" with fr differs from "Bonjour" with de (the test could fail).
  auto fr_bonjour = peft::test::peft_cli("generate --model " + q(model) + " --adapter " + q(fr) +
                                         " --prompt 'Bonjour'" + flags);
  EXPECT_NE(fr_bonjour.output, "Bonjour" + completions[1] + "\n");

  peft::test::write_file(file, "{\"prompt\": \"Hello\", \"adapter\": \"es\"}\n");
  auto unknown = peft::test::peft_cli("generate --model " + q(model) + adapters() + " --prompts " +
                                      q(file) + flags);
  EXPECT_NE(unknown.code, 0);
  EXPECT_NE(unknown.output.find("non-existing adapter(s): es"), std::string::npos)
      << unknown.output;
}

TEST_F(MixedBatchCli, LogitsRowAdaptersEqualEachRowAlone) {
  const at::Tensor ids =
      torch::tensor({{5, 17, 42, 99}, {3, 250, 7, 8}, {11, 12, 13, 14}, {1, 2, 3, 4}});
  peft::io::save_safetensors(tmp.str("ids.safetensors"),
                             std::map<std::string, at::Tensor>{{"input_ids", ids}});
  peft::test::write_file(tmp.str("rows.txt"), "de\n__base__\nfr\nde\n");
  auto run = peft::test::peft_cli("logits --model " + q(model) + adapters() + " --row-adapters " +
                                  q(tmp.str("rows.txt")) + " --input-ids " +
                                  q(tmp.str("ids.safetensors")) + " --out " +
                                  q(tmp.str("mixed.safetensors")));
  ASSERT_EQ(run.code, 0) << run.output;
  const at::Tensor mixed = peft::io::load_safetensors(tmp.str("mixed.safetensors")).at("logits");
  const std::vector<std::string> flags = {" --adapter " + q(de), "", " --adapter " + q(fr),
                                          " --adapter " + q(de)};
  for (int64_t i = 0; i < 4; ++i) {
    const std::string in = tmp.str("row" + std::to_string(i) + ".safetensors");
    const std::string out = tmp.str("out" + std::to_string(i) + ".safetensors");
    peft::io::save_safetensors(
        in, std::map<std::string, at::Tensor>{{"input_ids", ids.narrow(0, i, 1)}});
    auto alone = peft::test::peft_cli("logits --model " + q(model) + flags[static_cast<size_t>(i)] +
                                      " --input-ids " + q(in) + " --out " + q(out));
    ASSERT_EQ(alone.code, 0) << alone.output;
    EXPECT_EQ(
        compare(mixed.narrow(0, i, 1), peft::io::load_safetensors(out).at("logits"), 1e-5, 1e-5),
        "")
        << "row " << i;
  }
  EXPECT_GT((mixed[0] - mixed[3]).abs().max().item<double>(), 0.0);  // same adapter, different ids
  peft::test::write_file(tmp.str("rows.txt"), "de\nfr\n");
  auto wrong = peft::test::peft_cli(
      "logits --model " + q(model) + adapters() + " --row-adapters " + q(tmp.str("rows.txt")) +
      " --input-ids " + q(tmp.str("ids.safetensors")) + " --out " + q(tmp.str("x.safetensors")));
  EXPECT_NE(wrong.code, 0);
  EXPECT_NE(wrong.output.find("expected one line per row"), std::string::npos) << wrong.output;
}

}  // namespace
