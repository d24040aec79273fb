// Gradient checkpointing: the checkpoint() autograd Function on its own, then Llama, GPT-2 and BERT
// in training (LoRA with dropout, and full fine-tuning) give the same loss, gradients and generator
// state with and without it; eval / no-grad forwards and KV-cache forwards are unchanged.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "../src/models/checkpoint.h"
#include "peft/config.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/loss.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::PretrainedModel;
using peft::models::detail::checkpoint;
using peft::test::compare;

namespace {

constexpr double kAtol = 1e-6;
using Kind = peft::InitLoraWeights::Kind;

// Autograd nodes of CheckpointFunction reachable from t's grad_fn.
int checkpoint_nodes(const at::Tensor& t) {
  int count = 0;
  std::vector<torch::autograd::Node*> todo;
  std::unordered_set<torch::autograd::Node*> seen;
  if (t.grad_fn()) todo.push_back(t.grad_fn().get());
  while (!todo.empty()) {
    torch::autograd::Node* node = todo.back();
    todo.pop_back();
    if (!seen.insert(node).second) continue;
    if (node->name().find("CheckpointFunction") != std::string::npos) ++count;
    for (const auto& edge : node->next_edges()) {
      if (edge.function) todo.push_back(edge.function.get());
    }
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// checkpoint() itself.

struct TinyLayer {
  at::Tensor w = torch::randn({6, 6}).requires_grad_(true);
  at::Tensor b = torch::randn({6}).requires_grad_(true);
  // Dropout draws from the generator, so equal gradients need the recomputation's RNG restored.
  at::Tensor operator()(const at::Tensor& x) const {
    return torch::dropout(torch::tanh(torch::matmul(x, w) + b), 0.3, /*train=*/true) * 2.0;
  }
};

TEST(GradientCheckpointing, FunctionMatchesPlainAutogradWithDropout) {
  torch::manual_seed(0);
  TinyLayer layer;
  const at::Tensor x0 = torch::randn({3, 6});
  std::vector<at::Tensor> grads[2];
  at::Tensor outs[2], after[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    at::Tensor x = x0.clone().requires_grad_(true);
    torch::manual_seed(7);
    at::Tensor y = ckpt ? checkpoint(layer, x, {layer.w, layer.b}) : layer(x);
    EXPECT_EQ(checkpoint_nodes(y), ckpt);
    (y * y).sum().backward();
    outs[ckpt] = y.detach();
    grads[ckpt] = {x.grad(), layer.w.grad().clone(), layer.b.grad().clone()};
    after[ckpt] = torch::rand({4});  // the generator continues as if nothing was recomputed
    layer.w.mutable_grad() = at::Tensor();
    layer.b.mutable_grad() = at::Tensor();
  }
  EXPECT_EQ(compare(outs[1], outs[0], kAtol), "");
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(compare(grads[1][i], grads[0][i], kAtol), "") << i;
  EXPECT_TRUE(torch::equal(after[1], after[0]));
}

// Layer 0's input under LoRA comes from a frozen embedding: the parameters still get gradients.
TEST(GradientCheckpointing, FunctionReachesParamsWhenInputNeedsNoGrad) {
  torch::manual_seed(0);
  TinyLayer layer;
  const at::Tensor x = torch::randn({3, 6});  // requires_grad = false
  std::vector<at::Tensor> grads[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    torch::manual_seed(7);
    at::Tensor y = ckpt ? checkpoint(layer, x, {layer.w, layer.b}) : layer(x);
    ASSERT_TRUE(y.requires_grad());
    // autograd::grad, not only backward(): the gradients travel through the graph's edges.
    grads[ckpt] = torch::autograd::grad({y.pow(3).sum()}, {layer.w, layer.b});
  }
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(grads[1][i].defined());
    EXPECT_GT(grads[1][i].abs().sum().item<double>(), 0.0);
    EXPECT_EQ(compare(grads[1][i], grads[0][i], kAtol), "") << i;
  }
}

TEST(GradientCheckpointing, FunctionWithoutAnythingToDifferentiateIsPlainCall) {
  torch::manual_seed(0);
  const at::Tensor w = torch::randn({6, 6});
  const at::Tensor x = torch::randn({3, 6});
  auto fn = [&](const at::Tensor& t) { return torch::matmul(t, w); };
  const at::Tensor y = checkpoint(fn, x, {w});
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(torch::equal(y, fn(x)));
  at::Tensor wg = w.clone().requires_grad_(true);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(checkpoint(fn, x, {wg}).requires_grad());
}

// A parameter listed twice (tied weights) gets its gradient once.
TEST(GradientCheckpointing, FunctionCountsARepeatedParamOnce) {
  torch::manual_seed(0);
  TinyLayer layer;
  const at::Tensor x = torch::randn({3, 6});
  auto fn = [&](const at::Tensor& t) { return torch::matmul(t, layer.w); };
  fn(x).sum().backward();
  const at::Tensor expected = layer.w.grad().clone();
  layer.w.mutable_grad() = at::Tensor();
  checkpoint(fn, x, {layer.w, layer.w}).sum().backward();
  EXPECT_EQ(compare(layer.w.grad(), expected, kAtol), "");
}

// ---------------------------------------------------------------------------------------------
// The model zoo.

nlohmann::json llama_config() {
  return {{"model_type", "llama"},       {"vocab_size", 97},       {"hidden_size", 32},
          {"intermediate_size", 48},     {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-6},   {"rope_theta", 10000.0},
          {"tie_word_embeddings", false}};
}

nlohmann::json fixture_config(const std::string& id) {
  return nlohmann::json::parse(
      peft::test::read_file(peft::test::fixture("golden/" + id + "/base/config.json")));
}

peft::LoraConfig lora(std::vector<std::string> targets) {
  return peft::LoraConfig{.r = 4,
                          .target_modules = std::move(targets),
                          .lora_alpha = 8,
                          .lora_dropout = 0.1,
                          // false: A and B both random, so B != 0 and A gets a gradient
                          // ("gaussian" zeroes B, as PEFT does).
                          .init_lora_weights = {.kind = Kind::kFalse}};
}

struct Case {
  std::shared_ptr<PretrainedModel> model;
  std::shared_ptr<peft::PeftModel> peft;  // null for full fine-tuning
  ForwardInput input;
  at::Tensor labels;
};

Case make_case(const nlohmann::json& config, std::optional<peft::LoraConfig> lora_config,
               int64_t vocab, bool classifier = false) {
  Case c;
  torch::manual_seed(0);
  c.model = peft::models::from_config(config.dump());
  if (lora_config) c.peft = peft::get_peft_model(c.model, *lora_config);
  c.model->train();
  torch::manual_seed(1);
  c.input.input_ids = torch::randint(1, vocab, {2, 8}, torch::kLong);
  c.input.attention_mask = torch::ones({2, 8}, torch::kLong);
  c.input.attention_mask[1].slice(0, 6).fill_(0);  // padding on row 1
  c.labels = classifier ? torch::tensor({0, 2}, torch::kLong) : c.input.input_ids;
  return c;
}

struct Result {
  at::Tensor loss;
  std::map<std::string, at::Tensor> grads;  // every parameter that requires grad
  int checkpoint_nodes = 0;
  at::Tensor rng_after;
};

Result train_step(Case& c, bool checkpointing) {
  if (checkpointing) {
    c.model->gradient_checkpointing_enable();
  } else {
    c.model->gradient_checkpointing_disable();
  }
  EXPECT_EQ(c.model->is_gradient_checkpointing(), checkpointing);
  for (auto& p : c.model->parameters()) p.mutable_grad() = at::Tensor();
  torch::manual_seed(42);
  const at::Tensor logits = c.model->forward(c.input);
  Result r;
  r.loss = c.model->task() == peft::models::ModelTask::kCausalLm
               ? peft::train::causal_lm_loss(logits, c.labels)
               : peft::train::sequence_classification_loss(logits, c.labels);
  r.checkpoint_nodes = checkpoint_nodes(r.loss);
  r.loss.backward();
  r.rng_after = torch::rand({8});
  for (const auto& item : c.model->named_parameters()) {
    if (!item.value().requires_grad()) continue;
    const at::Tensor& g = item.value().grad();
    r.grads[item.key()] = g.defined() ? g.clone() : at::Tensor();
  }
  return r;
}

void expect_same_training_step(Case c, const std::string& layer0_param) {
  const Result plain = train_step(c, false);
  const Result ckpt = train_step(c, true);
  EXPECT_EQ(plain.checkpoint_nodes, 0);
  EXPECT_EQ(ckpt.checkpoint_nodes, c.model->num_hidden_layers());
  EXPECT_EQ(compare(ckpt.loss, plain.loss, kAtol), "");
  EXPECT_TRUE(torch::equal(ckpt.rng_after, plain.rng_after)) << "generator state after backward";
  ASSERT_FALSE(plain.grads.empty());
  ASSERT_EQ(ckpt.grads.size(), plain.grads.size());
  for (const auto& [name, g] : plain.grads) {
    const at::Tensor& other = ckpt.grads.at(name);
    ASSERT_EQ(other.defined(), g.defined()) << name;
    if (g.defined()) {
      EXPECT_EQ(compare(other, g, kAtol), "") << name;
    }
  }
  // The layer-0 parameter is reached even when the layer's input needs no gradient (LoRA).
  const at::Tensor& g0 = ckpt.grads.at(layer0_param);
  ASSERT_TRUE(g0.defined()) << layer0_param;
  EXPECT_GT(g0.abs().sum().item<double>(), 0.0) << layer0_param;
  // Switching off again gives the plain path.
  EXPECT_EQ(train_step(c, false).checkpoint_nodes, 0);
}

TEST(GradientCheckpointing, LlamaLoraLossAndGradsMatch) {
  expect_same_training_step(make_case(llama_config(), lora({"q_proj", "v_proj"}), 97),
                            "model.layers.0.self_attn.q_proj.lora_A.default.weight");
}

TEST(GradientCheckpointing, LlamaFullFineTuningLossAndGradsMatch) {
  expect_same_training_step(make_case(llama_config(), std::nullopt, 97),
                            "model.layers.0.self_attn.q_proj.weight");
}

TEST(GradientCheckpointing, Gpt2LoraLossAndGradsMatch) {
  auto cfg = fixture_config("model-gpt2");  // embd / attn / resid dropout 0.1
  auto config = lora({"c_attn"});
  config.fan_in_fan_out = true;
  expect_same_training_step(make_case(cfg, config, cfg.at("vocab_size").get<int64_t>()),
                            "transformer.h.0.attn.c_attn.lora_B.default.weight");
}

TEST(GradientCheckpointing, Gpt2FullFineTuningLossAndGradsMatch) {
  auto cfg = fixture_config("model-gpt2");
  expect_same_training_step(make_case(cfg, std::nullopt, cfg.at("vocab_size").get<int64_t>()),
                            "transformer.h.0.mlp.c_fc.weight");
}

TEST(GradientCheckpointing, BertLoraLossAndGradsMatch) {
  auto cfg = fixture_config("model-bert-seqcls");  // hidden / attention dropout 0.1
  expect_same_training_step(
      make_case(cfg, lora({"query", "value"}), cfg.at("vocab_size").get<int64_t>(), true),
      "bert.encoder.layer.0.attention.self.query.lora_A.default.weight");
}

TEST(GradientCheckpointing, BertFullFineTuningLossAndGradsMatch) {
  auto cfg = fixture_config("model-bert-seqcls");
  expect_same_training_step(make_case(cfg, std::nullopt, cfg.at("vocab_size").get<int64_t>(), true),
                            "bert.encoder.layer.0.intermediate.dense.weight");
}

TEST(GradientCheckpointing, RobertaLoraLossAndGradsMatch) {
  auto cfg = fixture_config("model-roberta-seqcls");
  expect_same_training_step(
      make_case(cfg, lora({"query", "value"}), cfg.at("vocab_size").get<int64_t>(), true),
      "roberta.encoder.layer.0.attention.self.value.lora_B.default.weight");
}

// Eval mode, or no grad mode in training, never checkpoints and gives the same outputs.
TEST(GradientCheckpointing, EvalAndNoGradForwardsAreUnchanged) {
  for (const auto& cfg : {llama_config(), fixture_config("model-gpt2")}) {
    const bool gpt2 = cfg.at("model_type") == "gpt2";
    auto config = lora({gpt2 ? "c_attn" : "q_proj"});
    config.fan_in_fan_out = gpt2;
    Case c = make_case(cfg, config, 97);
    auto forward = [&](bool checkpointing) {
      checkpointing ? c.model->gradient_checkpointing_enable()
                    : c.model->gradient_checkpointing_disable();
      torch::manual_seed(3);
      return c.model->forward(c.input);
    };
    c.model->eval();
    const at::Tensor eval_plain = forward(false), eval_ckpt = forward(true);
    EXPECT_EQ(checkpoint_nodes(eval_ckpt), 0);
    EXPECT_TRUE(torch::equal(eval_ckpt, eval_plain));
    c.model->train();
    torch::NoGradGuard no_grad;
    const at::Tensor train_plain = forward(false), train_ckpt = forward(true);
    EXPECT_FALSE(train_ckpt.requires_grad());
    EXPECT_TRUE(torch::equal(train_ckpt, train_plain));
  }
}

// A KV cache turns checkpointing off (transformers turns the cache off instead) and is filled.
TEST(GradientCheckpointing, ForwardWithKvCacheDoesNotCheckpoint) {
  Case c = make_case(llama_config(), lora({"q_proj", "v_proj"}), 97);
  c.model->gradient_checkpointing_enable();
  peft::models::KVCache cache;
  ForwardInput in = c.input;
  in.cache = &cache;
  const at::Tensor logits = c.model->forward(in);
  EXPECT_EQ(checkpoint_nodes(logits), 0);
  ASSERT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.length(), 8);
}

TEST(GradientCheckpointing, OffByDefault) {
  EXPECT_FALSE(peft::models::from_config(llama_config().dump())->is_gradient_checkpointing());
}

}  // namespace
