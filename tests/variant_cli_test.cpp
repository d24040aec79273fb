// `peft train --config` with each of PEFT 0.20's later variants (BD-LoRA, MiCA, VeLoRA, MonteCLoRA)
// trains the embedded demo model (its eval loss falls), and `peft merge` / `peft inspect` take the
// adapters it writes; QALoRA does the same on a GPTQ checkpoint of the demo model, where merging is
// refused as PEFT refuses it.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "gptq_pack.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::peft_cli;
using peft::test::q;

namespace {

struct VariantConfig {
  const char* name;
  const char* json;  // the LoraConfig fields besides peft_type / task_type
};

// `peft train` of `model` on the demo data with tmp/lora.json for 12 steps into tmp/out: it
// succeeds and the eval loss falls below 0.9 x its start.
void train_and_expect_learning(const fs::path& demo, const fs::path& model,
                               const peft::test::TempDir& tmp) {
  const auto r =
      peft_cli("train --model " + q(model) + " --data " + q(demo / "data" / "train.jsonl") +
               " --eval-data " + q(demo / "data" / "eval.jsonl") + " --config " +
               q(tmp.path() / "lora.json") + " --out " + q(tmp.path() / "out") +
               " --steps 12 --batch-size 16 --lr 3e-3");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.find("eval loss: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  double before = 0, after = 0;
  ASSERT_EQ(std::sscanf(r.output.c_str() + at, "eval loss: %lf -> %lf", &before, &after), 2)
      << r.output;
  EXPECT_LT(after, 0.9 * before) << r.output;
}

class VariantCli : public ::testing::TestWithParam<VariantConfig> {};

TEST_P(VariantCli, TrainsTheDemoModelThenMergesAndInspects) {
  peft::test::TempDir tmp;
  const fs::path demo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo";
  peft::test::write_file(
      tmp.str("lora.json"),
      std::string(R"({"peft_type": "LORA", "task_type": "CAUSAL_LM", )") + GetParam().json + "}");
  train_and_expect_learning(demo, demo / "model", tmp);
  if (HasFatalFailure()) return;
  const std::string log = peft::test::read_file(tmp.str("out/train_log.jsonl"));
  EXPECT_EQ(log.find("monteclora_loss") != std::string::npos,
            std::string(GetParam().name) == "monteclora");
  const auto m = peft_cli("merge --model " + q(demo / "model") + " --adapter " +
                          q(tmp.path() / "out") + " --out " + q(tmp.path() / "merged"));
  EXPECT_EQ(m.code, 0) << m.output;
  EXPECT_TRUE(fs::exists(tmp.path() / "merged" / "model.safetensors"));
  const auto i =
      peft_cli("inspect --model " + q(demo / "model") + " --adapter " + q(tmp.path() / "out"));
  EXPECT_EQ(i.code, 0) << i.output;
}

INSTANTIATE_TEST_SUITE_P(
    LaterVariants, VariantCli,
    ::testing::Values(
        VariantConfig{"bdlora",
                      R"("r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "o_proj"],
                         "use_bdlora": {"target_modules_bd_a": ["o_proj"],
                                        "target_modules_bd_b": ["q_proj", "v_proj"], "nblocks": 2})"},
        VariantConfig{"mica", R"("r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                                 "init_lora_weights": "mica")"},
        VariantConfig{"velora", R"("r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                                   "velora_config": {"num_groups": 16, "scale": 1.0,
                                                     "init_type": "batch_average"})"},
        VariantConfig{"monteclora",
                      R"("r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                                       "monteclora_config": {"num_samples": 4, "buffer_size": 8})"}),
    [](const ::testing::TestParamInfo<VariantConfig>& p) { return std::string(p.param.name); });

TEST(QaLoraCli, TrainsAGptqCheckpointOfTheDemoModelAndRefusesToMerge) {
  peft::test::TempDir tmp;
  const fs::path demo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo";
  peft::test::write_gptq_checkpoint((demo / "model").string(), tmp.str("gptq"), 4, 32,
                                    /*desc_act=*/true, /*v1=*/true);
  peft::test::write_file(tmp.str("lora.json"),
                         R"({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8,
                             "lora_alpha": 16, "target_modules": "all-linear",
                             "use_qalora": true, "qalora_group_size": 16})");
  train_and_expect_learning(demo, tmp.path() / "gptq", tmp);
  if (HasFatalFailure()) return;
  const auto m = peft_cli("merge --model " + q(tmp.path() / "gptq") + " --adapter " +
                          q(tmp.path() / "out") + " --out " + q(tmp.path() / "merged"));
  EXPECT_EQ(m.code, 1) << m.output;
  EXPECT_NE(m.output.find("Cannot merge LORA layers when the model is gptq quantized"),
            std::string::npos)
      << m.output;
  EXPECT_FALSE(fs::exists(tmp.path() / "merged"));
  const auto i =
      peft_cli("inspect --model " + q(tmp.path() / "gptq") + " --adapter " + q(tmp.path() / "out"));
  EXPECT_EQ(i.code, 0) << i.output;
}

}  // namespace
