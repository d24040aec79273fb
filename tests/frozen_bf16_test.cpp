// Frozen Linear weights held in bfloat16 for a bf16 run: only the weights autocast alone reads are
// converted, the numbers are autocast's, and gradient checkpointing recomputes under autocast.
#include "peft/train/frozen_bf16.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "peft/error.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/runtime.h"
#include "peft/train/loss.h"
#include "peft/train/trainer.h"

namespace {

// A tiny Llama whose head is tied to its embedding.
std::shared_ptr<peft::models::PretrainedModel> tiny_model() {
  torch::manual_seed(3);
  return peft::models::from_config(R"({
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "tie_word_embeddings": true})");
}

std::shared_ptr<peft::PeftModel> add_lora(const std::shared_ptr<peft::models::PretrainedModel>& m,
                                          bool dora) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.use_dora = dora;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kGaussian;  // B != 0: real gradients
  torch::manual_seed(5);
  return peft::get_peft_model(m, c);
}

std::map<std::string, at::ScalarType> dtypes(const peft::models::PretrainedModel& m) {
  std::map<std::string, at::ScalarType> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().scalar_type();
  return out;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Loss and the adapter's gradients of one bf16-autocast forward / backward.
std::pair<double, std::map<std::string, at::Tensor>> step(peft::models::PretrainedModel& m) {
  const auto ids = torch::arange(24, torch::kLong).remainder(128).reshape({2, 12}) * 5 % 128;
  at::Tensor loss;
  {
    peft::Bf16Autocast autocast;
    loss = peft::train::causal_lm_loss(m.forward(peft::models::ForwardInput{ids}), ids);
  }
  loss.backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& p : m.named_parameters()) {
    if (p.value().requires_grad()) grads[p.key()] = p.value().grad().clone();
  }
  return {loss.item<double>(), grads};
}

TEST(FrozenBf16, HoldsOnlyTheWeightsAutocastAloneReads) {
  auto model = tiny_model();
  auto pm = add_lora(model, /*dora=*/false);
  const auto summary = peft::train::store_frozen_linear_weights_in_bf16(*model);
  int64_t expected_bytes = 0, linear = 0;
  for (const auto& [name, dtype] : dtypes(*model)) {
    const bool base_linear = ends_with(name, "proj.weight");
    EXPECT_EQ(dtype, base_linear ? at::kBFloat16 : at::kFloat) << name;
    if (base_linear) {
      ++linear;
      expected_bytes += model->named_parameters()[name].numel() * 2;
    }
  }
  EXPECT_EQ(linear, 2 * 7);  // q k v o gate up down in each of 2 layers
  EXPECT_EQ(summary.layers, linear);
  EXPECT_EQ(summary.bytes_saved, expected_bytes);
  // The tied head and the embedding stay float32 and shared.
  const auto params = model->named_parameters();
  EXPECT_TRUE(params["lm_head.weight"].is_same(params["model.embed_tokens.weight"]) ||
              params["lm_head.weight"].data_ptr() ==
                  params["model.embed_tokens.weight"].data_ptr());
  EXPECT_EQ(params["model.embed_tokens.weight"].scalar_type(), at::kFloat);
  // Again: nothing left to convert.
  EXPECT_EQ(peft::train::store_frozen_linear_weights_in_bf16(*model).layers, 0);
}

TEST(FrozenBf16, LeavesTheWeightsAVariantReads) {
  auto model = tiny_model();
  auto pm = add_lora(model, /*dora=*/true);
  peft::train::store_frozen_linear_weights_in_bf16(*model);
  for (const auto& [name, dtype] : dtypes(*model)) {
    const bool dora_base = ends_with(name, "q_proj.weight") || ends_with(name, "v_proj.weight");
    if (ends_with(name, "proj.weight")) {
      EXPECT_EQ(dtype, dora_base ? at::kFloat : at::kBFloat16) << name;
    }
  }
}

TEST(FrozenBf16, GivesAutocastsLossAndGradients) {
  auto plain = tiny_model();
  auto plain_pm = add_lora(plain, false);
  auto held = tiny_model();
  auto held_pm = add_lora(held, false);
  ASSERT_GT(peft::train::store_frozen_linear_weights_in_bf16(*held).layers, 0);
  const auto [loss_a, grads_a] = step(*plain);
  const auto [loss_b, grads_b] = step(*held);
  EXPECT_NEAR(loss_b, loss_a, 1e-6 * std::abs(loss_a));
  ASSERT_EQ(grads_a.size(), grads_b.size());
  for (const auto& [name, g] : grads_a) {
    ASSERT_TRUE(grads_b.count(name)) << name;
    EXPECT_TRUE(torch::allclose(grads_b.at(name), g, 1e-5, 1e-7)) << name;
  }
}

// The recomputation in backward runs under the forward's autocast: the same gradients as without
// checkpointing (without the autocast state it computed in float32, and a bfloat16 weight met
// float32 activations).
TEST(FrozenBf16, GradientCheckpointingRecomputesUnderAutocast) {
  for (const bool convert : {false, true}) {
    auto plain = tiny_model();
    auto plain_pm = add_lora(plain, false);
    auto ckpt = tiny_model();
    auto ckpt_pm = add_lora(ckpt, false);
    if (convert) {
      peft::train::store_frozen_linear_weights_in_bf16(*plain);
      peft::train::store_frozen_linear_weights_in_bf16(*ckpt);
    }
    ckpt->gradient_checkpointing_enable();
    plain->train();
    ckpt->train();
    const auto [loss_a, grads_a] = step(*plain);
    const auto [loss_b, grads_b] = step(*ckpt);
    EXPECT_NEAR(loss_b, loss_a, 1e-6 * std::abs(loss_a)) << "convert " << convert;
    for (const auto& [name, g] : grads_a) {
      EXPECT_TRUE(torch::allclose(grads_b.at(name), g, 1e-5, 1e-7))
          << name << " convert " << convert << " max diff "
          << (grads_b.at(name) - g).abs().max().item<double>();
    }
  }
}

TEST(FrozenBf16, TheTrainerAsksForBf16) {
  peft::train::TrainingArguments a;
  a.max_steps = 1;
  a.bf16_frozen_weights = true;
  EXPECT_THROW(peft::train::check_training_arguments(a), peft::ConfigError);
  a.bf16 = true;
  EXPECT_NO_THROW(peft::train::check_training_arguments(a));
}

}  // namespace
