// Optimizers: AdamW against LibTorch's torch::optim::AdamW (PyTorch's algorithm), LoRA+ groups,
// LoRA-FA's projected update, gradient clipping, learning-rate schedules, state save / restore.
#include "peft/train/optimizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/loss.h"
#include "peft/train/schedule.h"
#include "test_util.h"

using peft::test::compare;
namespace train = peft::train;

namespace {

std::shared_ptr<peft::models::PretrainedModel> tiny_llama() {
  return peft::models::load_pretrained(peft::test::fixture("golden/train-llama-qv/base"));
}

peft::LoraConfig lora(std::vector<std::string> targets) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::move(targets);
  c.init_lora_weights.kind =
      peft::InitLoraWeights::Kind::kFalse;  // random B too: every factor gets a gradient
  return c;
}

// One forward/backward of the causal-LM loss on fixed random ids.
void backward_once(peft::models::PretrainedModel& model, uint64_t seed = 3) {
  torch::manual_seed(seed);
  peft::models::ForwardInput in;
  in.input_ids = torch::randint(model.vocab_size(), {2, 12}, torch::kLong);
  train::causal_lm_loss(model.forward(in), in.input_ids).backward();
}

std::map<std::string, at::Tensor> snapshot(const torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}

}  // namespace

TEST(Optimizer, AdamWMatchesTorchOptimAdamWOverSeveralSteps) {
  torch::manual_seed(0);
  std::vector<at::Tensor> ours{torch::randn({5, 3}).requires_grad_(),
                               torch::randn({7}).requires_grad_()};
  std::vector<at::Tensor> ref;
  for (auto& p : ours) ref.push_back(p.detach().clone().requires_grad_());
  std::vector<train::ParamGroup> groups{{.name = "default",
                                         .params = {{"a", ours[0]}, {"b", ours[1]}},
                                         .lr = 0.01,
                                         .weight_decay = 0.1}};
  train::AdamW opt(std::move(groups), {.lr = 0.01, .eps = 1e-8, .weight_decay = 0.1});
  torch::optim::AdamW torch_opt(ref, torch::optim::AdamWOptions(0.01).weight_decay(0.1).eps(1e-8));
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < ours.size(); ++i) {
      const at::Tensor g = torch::randn(ours[i].sizes());
      ours[i].mutable_grad() = g.clone();
      ref[i].mutable_grad() = g.clone();
    }
    opt.step();
    torch_opt.step();
    for (size_t i = 0; i < ours.size(); ++i)
      EXPECT_EQ(compare(ours[i], ref[i], 1e-7), "") << "step " << step;
  }
}

TEST(Optimizer, ZeroGradSetsGradientsToNoneAndSkipsThem) {
  at::Tensor p = torch::ones({3}).requires_grad_();
  train::AdamW opt({{.name = "default", .params = {{"p", p}}, .lr = 0.1, .weight_decay = 0.5}},
                   {.lr = 0.1});
  p.mutable_grad() = torch::ones({3});
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());
  opt.step();  // no gradient: no update, not even weight decay (PyTorch skips p.grad is None)
  EXPECT_TRUE(torch::equal(p, torch::ones({3})));
}

TEST(Optimizer, LoraPlusPutsFactorsInPeftsGroupsWithTheirLearningRates) {
  auto model = tiny_llama();
  auto cfg = lora({"q_proj", "v_proj", "embed_tokens"});
  cfg.modules_to_save = std::vector<std::string>{"lm_head"};
  auto pm = std::make_shared<peft::PeftModel>(model, cfg);
  auto opt =
      train::create_loraplus_optimizer(*model, {.lr = 1e-3, .weight_decay = 0.0},
                                       {.loraplus_lr_ratio = 16.0, .loraplus_lr_embedding = 1e-6});
  const auto& g = opt->param_groups();
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].name, "groupA");
  EXPECT_EQ(g[1].name, "embedding");
  EXPECT_EQ(g[2].name, "groupB");
  EXPECT_EQ(g[3].name, "groupB_no_decay");
  EXPECT_DOUBLE_EQ(g[0].lr, 1e-3);
  EXPECT_DOUBLE_EQ(g[1].lr, 1e-6);
  EXPECT_DOUBLE_EQ(g[2].lr, 16e-3);
  EXPECT_DOUBLE_EQ(g[3].lr, 16e-3);
  auto names = [](const train::ParamGroup& group) {
    std::set<std::string> out;
    for (const auto& p : group.params) out.insert(p.name);
    return out;
  };
  const auto a = names(g[0]), emb = names(g[1]), b = names(g[2]);
  EXPECT_TRUE(a.count("model.layers.0.self_attn.q_proj.lora_A.default.weight"));
  EXPECT_TRUE(a.count("lm_head.modules_to_save.default.weight"));  // 2-D, not lora_B: group A
  EXPECT_TRUE(b.count("model.layers.1.self_attn.v_proj.lora_B.default.weight"));
  EXPECT_EQ(emb, (std::set<std::string>{"model.embed_tokens.lora_embedding_A.default",
                                        "model.embed_tokens.lora_embedding_B.default"}));
  EXPECT_EQ(a.size() + emb.size() + b.size() + g[3].params.size(),
            train::trainable_parameters(*model).size());
  // One step: Adam's first update is about lr * sign(g), so B moves ~16x further than A.
  backward_once(*model);
  auto before = snapshot(*model);
  opt->step();
  auto after = snapshot(*model);
  const std::string q = "model.layers.0.self_attn.q_proj.";
  const double da = (after[q + "lora_A.default.weight"] - before[q + "lora_A.default.weight"])
                        .abs()
                        .max()
                        .item<double>();
  const double db = (after[q + "lora_B.default.weight"] - before[q + "lora_B.default.weight"])
                        .abs()
                        .max()
                        .item<double>();
  EXPECT_NEAR(da, 1e-3, 1e-4);
  EXPECT_NEAR(db, 16e-3, 1.6e-3);
}

TEST(Optimizer, LoraPlusKeepsLayerNormAndBiasParametersOutOfWeightDecay) {
  // GPT-2 style module: a LayerNorm's weight and any "bias" are not decay parameters.
  struct Net : torch::nn::Module {
    Net() {
      ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
      proj = register_module("proj", torch::nn::Linear(4, 4));
      scale = register_parameter("scale", torch::ones({4}));
    }
    torch::nn::LayerNorm ln{nullptr};
    torch::nn::Linear proj{nullptr};
    at::Tensor scale;
  };
  Net net;
  auto opt = train::create_loraplus_optimizer(net, {.lr = 0.1, .weight_decay = 0.01});
  const auto& g = opt->param_groups();
  std::set<std::string> decay, no_decay, a;
  for (const auto& p : g[2].params) decay.insert(p.name);
  for (const auto& p : g[3].params) no_decay.insert(p.name);
  for (const auto& p : g[0].params) a.insert(p.name);
  EXPECT_EQ(decay, std::set<std::string>{"scale"});
  EXPECT_EQ(no_decay, (std::set<std::string>{"ln.weight", "ln.bias", "proj.bias"}));
  EXPECT_EQ(a, std::set<std::string>{"proj.weight"});
  EXPECT_DOUBLE_EQ(g[2].weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(g[3].weight_decay, 0.0);
}

TEST(Optimizer, LoraFaFreezesAAndAppliesTheProjectedHfAdamWUpdateToB) {
  auto model = tiny_llama();
  auto cfg = lora({"q_proj", "v_proj"});
  cfg.rank_pattern = {{"v_proj", 2}};
  auto pm = std::make_shared<peft::PeftModel>(model, cfg);
  auto opt = train::create_lorafa_optimizer(*pm, {.lr = 0.01, .weight_decay = 0.1});
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("lora_A") != std::string::npos) {
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
    }
    if (p.key().find("lora_B") != std::string::npos) {
      EXPECT_TRUE(p.value().requires_grad()) << p.key();
    }
  }
  backward_once(*model);
  auto before = snapshot(*model);
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : model->named_parameters()) {
    if (p.value().grad().defined()) grads[p.key()] = p.value().grad().clone();
  }
  opt->step();
  auto after = snapshot(*model);
  for (const std::string layer :
       {"model.layers.0.self_attn.q_proj.", "model.layers.1.self_attn.v_proj."}) {
    const at::Tensor A = before[layer + "lora_A.default.weight"];
    const at::Tensor B = before[layer + "lora_B.default.weight"];
    EXPECT_TRUE(torch::equal(after[layer + "lora_A.default.weight"], A))
        << layer << " A must stay frozen";
    const double s =
        layer.find("v_proj") != std::string::npos ? 8.0 / 2 : 8.0 / 4;  // rank_pattern respected
    // The reference: PEFT's formula step by step (bf16 product as under autocast), first step of HF
    // AdamW.
    const at::Tensor inv = at::linalg_pinv(A.matmul(A.t()) + 1e-8 * torch::eye(A.size(0)));
    const at::Tensor g = (grads[layer + "lora_B.default.weight"]
                              .to(torch::kBFloat16)
                              .matmul(inv.to(torch::kBFloat16)) *
                          (1.0 / (s * s)))
                             .to(torch::kFloat);
    const at::Tensor m = 0.1 * g, v = 0.001 * g * g;
    const double step_size = 0.01 * std::sqrt(1 - 0.999) / (1 - 0.9);
    at::Tensor expected = B - step_size * m / (v.sqrt() + 1e-6);
    expected = expected - 0.01 * 0.1 * expected;
    EXPECT_EQ(compare(after[layer + "lora_B.default.weight"], expected, 1e-6), "") << layer;
  }
}

TEST(Optimizer, ClipGradNormScalesLikeTorchNnUtils) {
  at::Tensor a = torch::zeros({2}).requires_grad_(), b = torch::zeros({1}).requires_grad_();
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  const double total = train::clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(total, 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 4.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(train::clip_grad_norm({a, b}, 10.0), 1.0, 1e-5);  // below the limit: unchanged
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-6);
}

TEST(Optimizer, StateDictRestoresAnIdenticalContinuation) {
  auto make = [](at::Tensor p) {
    return train::AdamW(
        {{.name = "default", .params = {{"p", p}}, .lr = 0.05, .weight_decay = 0.01}},
        {.lr = 0.05});
  };
  torch::manual_seed(4);
  at::Tensor p1 = torch::randn({4, 4}).requires_grad_();
  at::Tensor p2 = p1.detach().clone().requires_grad_();
  std::vector<at::Tensor> grads;
  for (int i = 0; i < 6; ++i) grads.push_back(torch::randn({4, 4}));
  auto o1 = make(p1);
  for (int i = 0; i < 6; ++i) {
    p1.mutable_grad() = grads[static_cast<size_t>(i)].clone();
    o1.step();
  }
  auto o2a = make(p2);
  for (int i = 0; i < 3; ++i) {
    p2.mutable_grad() = grads[static_cast<size_t>(i)].clone();
    o2a.step();
  }
  std::map<std::string, at::Tensor> state;
  for (auto& [k, v] : o2a.state_dict()) state[k] = v.clone();
  auto o2b = make(p2);
  o2b.load_state_dict(state, "test");
  for (int i = 3; i < 6; ++i) {
    p2.mutable_grad() = grads[static_cast<size_t>(i)].clone();
    o2b.step();
  }
  EXPECT_TRUE(torch::equal(p1, p2));
  state.erase("p/exp_avg");
  auto o3 = make(p2);
  EXPECT_THROW(o3.load_state_dict(state, "ckpt"), peft::FormatError);
}

TEST(Schedule, MatchesTransformersLambdas) {
  train::LrSchedule linear{
      .kind = train::ScheduleKind::kLinear, .warmup_steps = 2, .total_steps = 10};
  EXPECT_DOUBLE_EQ(linear.factor(0), 0.0);
  EXPECT_DOUBLE_EQ(linear.factor(1), 0.5);
  EXPECT_DOUBLE_EQ(linear.factor(2), 1.0);
  EXPECT_DOUBLE_EQ(linear.factor(6), 0.5);
  EXPECT_DOUBLE_EQ(linear.factor(10), 0.0);
  train::LrSchedule cosine{
      .kind = train::ScheduleKind::kCosine, .warmup_steps = 0, .total_steps = 10};
  EXPECT_DOUBLE_EQ(cosine.factor(0), 1.0);
  EXPECT_NEAR(cosine.factor(5), 0.5, 1e-12);
  EXPECT_NEAR(cosine.factor(10), 0.0, 1e-12);
  train::LrSchedule constant{
      .kind = train::ScheduleKind::kConstant, .warmup_steps = 4, .total_steps = 10};
  EXPECT_DOUBLE_EQ(constant.factor(1), 0.25);
  EXPECT_DOUBLE_EQ(constant.factor(9), 1.0);
  EXPECT_THROW(train::parse_schedule_kind("cosine_with_restarts"), peft::ConfigError);
  EXPECT_THROW(train::parse_optimizer_kind("sgd"), peft::ConfigError);
}
