// target_parameters (PEFT's ParamWrapper): shapes and layouts, forward through param(), merge /
// unmerge invariants, save / load, and the documented refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/lora/mixed_batch.h"
#include "peft/lora/param.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace {

using peft::LoraConfig;
using peft::nn::ParamModuleImpl;

// A tiny MoE-like holder: experts computed with the fused weights read through param().
struct ExpertsImpl : ParamModuleImpl {
  ExpertsImpl() : ParamModuleImpl("Experts") {
    register_parameter("gate_up_proj", torch::randn({3, 8, 5}), false);  // (E, 2 ff, hidden)
    register_parameter("down_proj", torch::randn({3, 5, 4}), false);     // (E, hidden, ff)
    register_parameter("scale", torch::ones({5}), false);
  }
  // x: (T, 5); every token through expert t % 3.
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor gu = param("gate_up_proj"), dn = param("down_proj");
    std::vector<at::Tensor> rows;
    for (int64_t t = 0; t < x.size(0); ++t) {
      const int64_t e = t % 3;
      auto h = at::linear(x[t], gu[e]).chunk(2, -1);
      rows.push_back(at::linear(at::silu(h[0]) * h[1], dn[e]) * param("scale"));
    }
    return at::stack(rows);
  }
};

struct MoeLike : torch::nn::Module {
  MoeLike() {
    q_proj = register_module("q_proj", peft::nn::Linear(5, 5, false));
    experts = register_module("experts", std::make_shared<ExpertsImpl>());
  }
  at::Tensor forward(const at::Tensor& x) { return experts->forward(q_proj->forward(x)); }
  peft::nn::Linear q_proj{nullptr};
  std::shared_ptr<ExpertsImpl> experts;
};

LoraConfig experts_config() {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"q_proj"};
  c.target_parameters = std::vector<std::string>{"experts.gate_up_proj", "experts.down_proj"};
  c.rank_pattern = {{"gate_up_proj", 2}};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  return c;
}

TEST(ParamLora, LayoutsFollowPeft) {
  torch::manual_seed(0);
  auto model = std::make_shared<MoeLike>();
  auto pm = peft::get_peft_model(model, experts_config());
  auto gu = model->experts->param_lora("gate_up_proj");
  auto dn = model->experts->param_lora("down_proj");
  ASSERT_TRUE(gu && dn);
  EXPECT_EQ(model->experts->param_lora("scale"), nullptr);
  // (E, d1, d2) without is_transposed: in = d2, out = d1; A (r E, in), B (out, r E); rank per
  // expert.
  EXPECT_EQ(gu->in_features(), 5);
  EXPECT_EQ(gu->out_features(), 8);
  EXPECT_EQ(gu->adapter_tensor("default", "lora_A.weight").sizes(), (std::vector<int64_t>{6, 5}));
  EXPECT_EQ(gu->adapter_tensor("default", "lora_B.weight").sizes(), (std::vector<int64_t>{8, 6}));
  EXPECT_EQ(dn->adapter_tensor("default", "lora_A.weight").sizes(), (std::vector<int64_t>{12, 4}));
  // delta[e, o, i] = s sum_k B[o, k E + e] A[e r + k, i].
  const at::Tensor A = gu->adapter_tensor("default", "lora_A.weight");
  const at::Tensor B = gu->adapter_tensor("default", "lora_B.weight");
  const double s = gu->scaling("default");
  EXPECT_DOUBLE_EQ(s, 4.0);
  at::Tensor expect = torch::zeros({3, 8, 5});
  for (int64_t e = 0; e < 3; ++e)
    for (int64_t k = 0; k < 2; ++k)
      expect[e] += s * at::outer(B.select(1, k * 3 + e), A[e * 2 + k]);
  EXPECT_TRUE(at::allclose(gu->get_delta_weight("default"), expect, 1e-5, 1e-6));
  // Per-expert factors agree with the delta.
  for (int64_t e = 0; e < 3; ++e) {
    auto f = gu->expert_factors(e);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(at::allclose(f[0].scaling * at::matmul(f[0].B, f[0].A), expect[e], 1e-5, 1e-6));
  }
  // PEFT's keys: the first targeted parameter is the innermost wrapper.
  std::set<std::string> keys;
  for (auto& [k, v] : pm->get_peft_model_state_dict("default")) keys.insert(k);
  EXPECT_EQ(keys,
            (std::set<std::string>{
                "base_model.model.experts.base_layer.lora_A.weight",
                "base_model.model.experts.base_layer.lora_B.weight",
                "base_model.model.experts.lora_A.weight", "base_model.model.experts.lora_B.weight",
                "base_model.model.q_proj.lora_A.weight", "base_model.model.q_proj.lora_B.weight"}));
}

TEST(ParamLora, ForwardMergeUnmergeAndDisable) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  auto model = std::make_shared<MoeLike>();
  const at::Tensor x = torch::randn({6, 5});
  const at::Tensor base = model->forward(x);
  const at::Tensor W = model->experts->named_parameters(false)["gate_up_proj"].clone();
  auto pm = peft::get_peft_model(model, experts_config());
  const at::Tensor adapted = model->forward(x);
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);  // the LoRA changes the output
  {
    auto guard = pm->disable_adapter();
    EXPECT_TRUE(at::allclose(model->forward(x), base, 1e-6, 1e-6));
  }
  pm->merge_adapter();
  EXPECT_TRUE(at::allclose(model->forward(x), adapted, 1e-4, 1e-5));
  pm->unmerge_adapter();
  EXPECT_TRUE(at::allclose(model->experts->named_parameters(false)["gate_up_proj"], W, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(model->forward(x), adapted, 1e-5, 1e-6));
  // merge_and_unload: the merged parameters remain, the LoRA slots go.
  pm->merge_and_unload();
  EXPECT_TRUE(model->experts->targeted_parameters().empty());
  EXPECT_TRUE(at::allclose(model->forward(x), adapted, 1e-4, 1e-5));
  for (auto& item : model->named_parameters())
    EXPECT_EQ(item.key().find("lora"), std::string::npos) << item.key();
}

TEST(ParamLora, ZeroBIsBaseAndFactorsTrain) {
  torch::manual_seed(2);
  auto model = std::make_shared<MoeLike>();
  const at::Tensor x = torch::randn({4, 5});
  at::Tensor base;
  {
    torch::NoGradGuard no_grad;
    base = model->forward(x);
  }
  LoraConfig c = experts_config();
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kTrue;
  auto pm = peft::get_peft_model(model, c);
  at::Tensor y = model->forward(x);
  EXPECT_TRUE(at::allclose(y, base, 1e-6, 1e-6));
  y.pow(2).sum().backward();
  auto gu = model->experts->param_lora("gate_up_proj");
  const at::Tensor B = gu->adapter_tensor("default", "lora_B.weight");
  ASSERT_TRUE(B.requires_grad());
  ASSERT_TRUE(B.grad().defined());
  EXPECT_GT(B.grad().abs().sum().item<double>(), 0.0);
  EXPECT_FALSE(model->experts->named_parameters(false)["gate_up_proj"].requires_grad());
}

TEST(ParamLora, SaveLoadIsBitExact) {
  torch::manual_seed(3);
  peft::test::TempDir dir;
  auto model = std::make_shared<MoeLike>();
  auto pm = peft::get_peft_model(model, experts_config());
  pm->save_pretrained(dir.str());
  torch::manual_seed(4);
  auto other = std::make_shared<MoeLike>();
  auto loaded = peft::PeftModel::from_pretrained(other, dir.str());
  EXPECT_EQ(loaded->peft_config("default").target_parameters, experts_config().target_parameters);
  EXPECT_EQ(peft::test::state_dict_difference(pm->get_peft_model_state_dict("default"),
                                              loaded->get_peft_model_state_dict("default")),
            "");
}

TEST(ParamLora, TwoAdaptersWithTargetParametersAreRefused) {
  auto model = std::make_shared<MoeLike>();
  auto pm = peft::get_peft_model(model, experts_config());
  try {
    pm->add_adapter("second", experts_config());
    FAIL() << "expected UnsupportedError";
  } catch (const peft::UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("two adapters with target_parameters"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(model->experts->param_lora("gate_up_proj")->has_adapter("second"));  // rolled back
  // An adapter with target_modules only is fine next to it.
  LoraConfig plain;
  plain.target_modules = std::vector<std::string>{"q_proj"};
  pm->add_adapter("plain", plain);
}

TEST(ParamLora, RefusalsNameTheProblem) {
  // Dropout, like PEFT.
  {
    auto model = std::make_shared<MoeLike>();
    LoraConfig c = experts_config();
    c.lora_dropout = 0.1;
    EXPECT_THROW(peft::get_peft_model(model, c), peft::ConfigError);
  }
  // A parameter of a module that is not a ParamModule.
  {
    auto model = std::make_shared<peft::test::MLPImpl>();
    struct Holder : torch::nn::Module {
      Holder() { register_parameter("w", torch::zeros({2, 2})); }
    };
    model->register_module("holder", std::make_shared<Holder>());
    LoraConfig c;
    c.target_modules = std::vector<std::string>{};
    c.target_parameters = std::vector<std::string>{"holder.w"};
    try {
      peft::get_peft_model(model, c);
      FAIL() << "expected UnsupportedError";
    } catch (const peft::UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("ParamModuleImpl"), std::string::npos) << e.what();
    }
  }
  // Nothing matched at all.
  {
    auto model = std::make_shared<MoeLike>();
    LoraConfig c;
    c.target_modules = std::vector<std::string>{};
    c.target_parameters = std::vector<std::string>{"nope.weight"};
    EXPECT_THROW(peft::get_peft_model(model, c), peft::NoMatchingModuleError);
  }
  // Mixed batches, as in PEFT.
  {
    auto model = std::make_shared<MoeLike>();
    auto pm = peft::get_peft_model(model, experts_config());
    model->eval();
    EXPECT_THROW(peft::nn::check_adapter_names(*model, {"default", "__base__"}),
                 peft::UnsupportedError);
  }
}

TEST(ParamLora, TwoDimensionalParameter) {
  torch::NoGradGuard no_grad;
  struct Mixer : ParamModuleImpl {
    Mixer() { register_parameter("proj", torch::randn({6, 10}), false); }
  };
  struct Root : torch::nn::Module {
    Root() { mixer = register_module("mixer", std::make_shared<Mixer>()); }
    std::shared_ptr<Mixer> mixer;
  };
  torch::manual_seed(5);
  auto model = std::make_shared<Root>();
  LoraConfig c;
  c.r = 3;
  c.lora_alpha = 5;
  c.target_parameters = std::vector<std::string>{"mixer.proj"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  auto pm = peft::get_peft_model(model, c);
  auto slot = model->mixer->param_lora("proj");
  const at::Tensor A = slot->adapter_tensor("default", "lora_A.weight");
  const at::Tensor B = slot->adapter_tensor("default", "lora_B.weight");
  EXPECT_EQ(A.sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_TRUE(
      at::allclose(slot->get_delta_weight("default"), at::matmul(B, A) * (5.0 / 3.0), 1e-6, 1e-6));
  EXPECT_TRUE(
      at::allclose(model->mixer->param("proj"),
                   model->mixer->named_parameters(false)["proj"] + at::matmul(B, A) * (5.0 / 3.0)));
}

}  // namespace
