// `peft init` on the embedded demo model: PiSSA writes the adapter and the residual base, which
// together give the base model's outputs; EVA and CorDA learn from --data; data-driven inits
// without --data fail before writing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/config.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

const fs::path kDemo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo";

std::string write_config(const peft::test::TempDir& dir, const std::string& init,
                         const std::string& extra = "") {
  const std::string path = dir.str("lora.json");
  peft::test::write_file(
      path,
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
    "init_lora_weights": )" +
          init + extra + "}");
  return path;
}

at::Tensor logits(peft::models::PretrainedModel& m) {
  peft::models::ForwardInput in;
  in.input_ids = torch::tensor({{5, 17, 42, 99, 3, 250}});
  torch::NoGradGuard no_grad;
  return m.forward(in);
}

TEST(PeftInitCli, PissaWritesTheAdapterAndTheResidualBase) {
  peft::test::TempDir dir;
  const std::string cfg = write_config(dir, "\"pissa_niter_4\"");
  auto run = peft::test::peft_cli("init --model " + (kDemo / "model").string() + " --config " +
                                  cfg + " --out " + dir.str("out"));
  ASSERT_EQ(run.code, 0) << run.output;
  EXPECT_NE(run.output.find("residual base model"), std::string::npos) << run.output;
  ASSERT_TRUE(fs::exists(dir.path() / "out" / "residual_model" / "model.safetensors"));
  ASSERT_TRUE(fs::exists(dir.path() / "out" / "residual_model" / "tokenizer.json"));
  EXPECT_EQ(peft::load_lora_config(dir.str("out/adapter_config.json")).init_lora_weights.kind,
            peft::InitLoraWeights::Kind::kTrue);
  auto base = peft::models::load_pretrained((kDemo / "model").string());
  base->eval();
  const at::Tensor expected = logits(*base);
  auto residual = peft::models::load_pretrained(dir.str("out/residual_model"));
  residual->eval();
  EXPECT_GT((logits(*residual) - expected).abs().max().item<double>(), 1e-3)
      << "the residual alone differs";
  auto pm = peft::PeftModel::from_pretrained(residual, dir.str("out"));
  EXPECT_EQ(peft::test::compare(logits(*residual), expected, 1e-4, 1e-4), "");
}

TEST(PeftInitCli, EvaAndCordaLearnFromData) {
  for (const std::string init : {"\"eva\"", "\"corda\""}) {
    peft::test::TempDir dir;
    const std::string cfg = write_config(dir, init);
    auto run = peft::test::peft_cli("init --model " + (kDemo / "model").string() + " --config " +
                                    cfg + " --out " + dir.str("out") + " --data " +
                                    (kDemo / "data" / "train.jsonl").string() +
                                    " --max-batches 8 --batch-size 4");
    ASSERT_EQ(run.code, 0) << init << ": " << run.output;
    ASSERT_TRUE(fs::exists(dir.path() / "out" / "adapter_model.safetensors")) << init;
    EXPECT_EQ(fs::exists(dir.path() / "out" / "residual_model"), init == "\"corda\"") << init;
  }
}

TEST(PeftInitCli, DataDrivenInitWithoutDataFailsBeforeWriting) {
  peft::test::TempDir dir;
  const std::string cfg = write_config(dir, "\"lora_ga\"");
  auto run = peft::test::peft_cli("init --model " + (kDemo / "model").string() + " --config " +
                                  cfg + " --out " + dir.str("out"));
  EXPECT_EQ(run.code, 2) << run.output;
  EXPECT_NE(run.output.find("--data"), std::string::npos) << run.output;
  EXPECT_FALSE(fs::exists(dir.path() / "out"));
}

}  // namespace
