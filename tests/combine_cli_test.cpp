// `peft combine` end to end on the golden tiny Llama: the folder it writes loads back as the same
// adapter that add_weighted_adapter builds in-process (cat and linear), and bad options fail with
// exit code 2 before writing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "peft/combine.h"
#include "peft/config.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::compare;

namespace {

using peft::test::q;

class PeftCombineCli : public ::testing::Test {
 protected:
  fs::path base = fs::path(peft::test::fixture("golden/model-llama")) / "base";
  peft::test::TempDir tmp;
  fs::path a = tmp.path() / "a";
  fs::path b = tmp.path() / "b";

  void SetUp() override {
    make_adapter(a, 1, {"q_proj", "v_proj"});
    make_adapter(b, 2, {"q_proj", "k_proj"});
  }

  // A random (init_lora_weights = false: B is not zero) r = 4 adapter saved as a PEFT folder.
  void make_adapter(const fs::path& dir, uint64_t seed, std::vector<std::string> targets) {
    torch::manual_seed(seed);
    auto model = peft::models::load_pretrained(base.string());
    peft::LoraConfig c;
    c.r = 4;
    c.lora_alpha = 8;
    c.target_modules = std::move(targets);
    c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
    peft::get_peft_model(model, c)->save_pretrained(dir.string());
  }

  std::string combine_args(const std::string& type, const std::string& weights,
                           const fs::path& out) {
    return "combine --model " + q(base) + " --adapter math=" + q(a) + " --adapter code=" + q(b) +
           " --weights " + weights + " --type " + type + " --out " + q(out);
  }
};

at::Tensor logits(peft::models::PretrainedModel& m) {
  peft::models::ForwardInput in;
  in.input_ids = torch::tensor({{5, 17, 42, 99, 3, 250}});
  torch::NoGradGuard no_grad;
  return m.forward(in);
}

TEST_F(PeftCombineCli, WritesTheAdapterThatAddWeightedAdapterBuilds) {
  for (const std::string type : {"cat", "linear"}) {
    const fs::path out = tmp.path() / ("out_" + type);
    auto run = peft::test::peft_cli(combine_args(type, "0.7,1.3", out));
    ASSERT_EQ(run.code, 0) << run.output;
    const int r = type == "cat" ? 8 : 4;
    EXPECT_NE(run.output.find("with " + type + ": r=" + std::to_string(r) +
                              ", lora_alpha=" + std::to_string(r)),
              std::string::npos)
        << run.output;
    EXPECT_NE(run.output.find(out.string()), std::string::npos) << run.output;
    // Only PEFT's files, directly in OUT.
    std::set<std::string> files;
    for (const auto& e : fs::directory_iterator(out)) files.insert(e.path().filename().string());
    EXPECT_EQ(files, (std::set<std::string>{"README.md", "adapter_config.json",
                                            "adapter_model.safetensors"}));
    const peft::LoraConfig written = peft::load_lora_config((out / "adapter_config.json").string());
    EXPECT_EQ(written.r, r);
    EXPECT_EQ(written.lora_alpha, r);

    auto model = peft::models::load_pretrained(base.string());
    model->eval();
    auto pm = peft::PeftModel::from_pretrained(model, a.string(), "math");
    pm->load_adapter(b.string(), "code");
    peft::WeightedAdapterOptions o;
    o.combination_type = peft::parse_combination_type(type);
    peft::add_weighted_adapter(*pm, {"math", "code"}, {0.7, 1.3}, "expected", o);
    pm->load_adapter(out.string(), "cli");
    int compared = 0;
    for (auto& [name, layer] : peft::nn::lora_layers(*model)) {
      if (!layer->has_adapter("expected")) continue;
      ASSERT_TRUE(layer->has_adapter("cli")) << name;
      EXPECT_EQ(compare(layer->get_delta_weight("cli"), layer->get_delta_weight("expected"), 1e-6),
                "")
          << name;
      ++compared;
    }
    EXPECT_EQ(compared, 6) << type;  // 2 layers x {q, k, v}
    pm->set_adapter("cli");
    const at::Tensor got = logits(*model);
    pm->set_adapter("expected");
    EXPECT_EQ(compare(got, logits(*model), 1e-5, 1e-5), "") << type;
  }
}

TEST_F(PeftCombineCli, BadOptionsExitWithCodeTwoBeforeWriting) {
  const fs::path out = tmp.path() / "out";
  auto count = peft::test::peft_cli(combine_args("linear", "1", out));
  EXPECT_EQ(count.code, 2) << count.output;
  EXPECT_NE(count.output.find("2 adapters but 1 weights"), std::string::npos) << count.output;
  auto type = peft::test::peft_cli(combine_args("average", "1,1", out));
  EXPECT_EQ(type.code, 2) << type.output;
  EXPECT_NE(type.output.find(
                "Invalid combination_type: average (expected one of \"svd\", \"linear\", \"cat\""),
            std::string::npos)
      << type.output;
  // The type is checked before PEFT's rewrite of a single adapter to "linear".
  const std::string one = "combine --model " + q(base) + " --adapter math=" + q(a) +
                          " --weights 1 --type average --out " + q(out);
  auto single = peft::test::peft_cli(one);
  EXPECT_EQ(single.code, 2) << single.output;
  EXPECT_NE(single.output.find("Invalid combination_type: average"), std::string::npos)
      << single.output;
  auto sign = peft::test::peft_cli(combine_args("ties", "1,1", out) +
                                   " --density 0.5 --majority-sign most");
  EXPECT_EQ(sign.code, 2) << sign.output;
  EXPECT_NE(
      sign.output.find("majority_sign_method \"most\" is not one of \"total\", \"frequency\""),
      std::string::npos)
      << sign.output;
  auto density = peft::test::peft_cli(combine_args("ties", "1,1", out));
  EXPECT_EQ(density.code, 2) << density.output;
  EXPECT_NE(density.output.find("--type ties needs --density"), std::string::npos)
      << density.output;
  auto syntax = peft::test::peft_cli("combine --model " + q(base) + " --adapter " + q(a) +
                                     " --weights 1 --out " + q(out));
  EXPECT_EQ(syntax.code, 2) << syntax.output;
  EXPECT_NE(syntax.output.find("is not NAME=DIR"), std::string::npos) << syntax.output;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
