// Llama family (llama, mistral, qwen2, qwen3) against transformers' logits, KV cache and padding
// invariants, RoPE scaling, tied embeddings and config errors (text generation: generate_test.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "../src/models/rope.h"
#include "peft/error.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::KVCache;
using peft::models::PretrainedModel;
using peft::test::compare;
using Rows = std::vector<std::vector<int64_t>>;

namespace {

constexpr double kTol = 1e-4;  // the golden cases' atol / rtol for transformer logits

std::string golden(const std::string& case_id, const std::string& rel = "") {
  return peft::test::fixture("golden/" + case_id + (rel.empty() ? "" : "/" + rel));
}

at::Tensor logits_of(PretrainedModel& model, const at::Tensor& ids, const at::Tensor& mask = {},
                     KVCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  return model.forward(ForwardInput{ids, mask, {}, cache});
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// Reports a golden comparison and prints its max |diff| (the figure the conformance log quotes).
void expect_golden(const std::string& what, const at::Tensor& actual, const at::Tensor& expected) {
  EXPECT_EQ(compare(actual, expected, kTol, kTol), "") << what;
  if (actual.sizes() == expected.sizes()) {
    std::printf("[ golden   ] %s max |diff| %.3g\n", what.c_str(), max_abs_diff(actual, expected));
  }
}

nlohmann::json tiny_config(const std::string& type) {
  return {{"model_type", type},          {"vocab_size", 97},       {"hidden_size", 32},
          {"intermediate_size", 48},     {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-6},   {"rope_theta", 10000.0},
          {"tie_word_embeddings", false}};
}

std::shared_ptr<PretrainedModel> build(const nlohmann::json& config, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto model = peft::models::from_config(config.dump());
  model->eval();
  return model;
}

// Copies every parameter of `from` into `to` (same architecture).
void copy_weights(PretrainedModel& from, PretrainedModel& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().copy_(src[item.key()]);
}

at::Tensor random_ids(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {batch, seq}, torch::kLong);
}

// ---------------------------------------------------------------------------------------------------------------
// Golden cases: transformers + PEFT logits (base, adapter, merged).

class LlamaGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    inputs = peft::io::load_safetensors(golden(GetParam(), "inputs.safetensors"));
    expected = peft::io::load_safetensors(golden(GetParam(), "expected.safetensors"));
    model = peft::models::load_pretrained(golden(GetParam(), "base"));
  }
  std::map<std::string, at::Tensor> inputs, expected;
  std::shared_ptr<PretrainedModel> model;
};

TEST_P(LlamaGolden, BaseLogitsMatchTransformers) {
  expect_golden(GetParam() + " logits_base", logits_of(*model, inputs.at("input_ids")),
                expected.at("logits_base"));
}

TEST_P(LlamaGolden, AdapterLogitsMatchPeft) {
  auto pm = peft::PeftModel::from_pretrained(model, golden(GetParam(), "adapter"));
  expect_golden(GetParam() + " logits_adapter", logits_of(*model, inputs.at("input_ids")),
                expected.at("logits_adapter"));
}

TEST_P(LlamaGolden, MergeAndUnloadLogitsMatchPeft) {
  auto pm = peft::PeftModel::from_pretrained(model, golden(GetParam(), "adapter"));
  auto merged = std::dynamic_pointer_cast<PretrainedModel>(pm->merge_and_unload());
  ASSERT_TRUE(merged);
  expect_golden(GetParam() + " logits_merged", logits_of(*merged, inputs.at("input_ids")),
                expected.at("logits_merged"));
}

INSTANTIATE_TEST_SUITE_P(Cases, LlamaGolden,
                         ::testing::Values("model-llama", "model-qwen2", "model-llama-all-linear"),
                         [](const auto& case_info) {
                           std::string name = case_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(LlamaGoldenSaveFormat, TwoSavedAdaptersGivePeftLogits) {
  const std::string id = "save-format-llama";
  auto inputs = peft::io::load_safetensors(golden(id, "inputs.safetensors"));
  auto expected = peft::io::load_safetensors(golden(id, "expected.safetensors"));
  auto model = peft::models::load_pretrained(golden(id, "base"));
  auto pm = peft::PeftModel::from_pretrained(model, golden(id, "save_all"));
  pm->load_adapter(golden(id, "save_all/other"), "other");
  expect_golden(id + " logits_default", logits_of(*model, inputs.at("input_ids")),
                expected.at("logits_default"));
  pm->set_adapter("other");
  expect_golden(id + " logits_other", logits_of(*model, inputs.at("input_ids")),
                expected.at("logits_other"));
}

// ---------------------------------------------------------------------------------------------------------------
// Forward invariants on the golden llama checkpoint.

class LlamaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model = peft::models::load_pretrained(golden("model-llama", "base"));
    ids = peft::io::load_safetensors(golden("model-llama", "inputs.safetensors")).at("input_ids");
  }
  std::shared_ptr<PretrainedModel> model;
  at::Tensor ids;
};

TEST_F(LlamaModelTest, KvCacheDecodeMatchesFullForward) {
  const int64_t seq = ids.size(1);
  ASSERT_GE(seq, 4);
  at::Tensor full = logits_of(*model, ids);
  KVCache cache;
  const int64_t prefill = seq / 2;
  std::vector<at::Tensor> parts{logits_of(*model, ids.narrow(1, 0, prefill), {}, &cache)};
  EXPECT_EQ(cache.length(), prefill);
  for (int64_t t = prefill; t < seq; ++t)
    parts.push_back(logits_of(*model, ids.narrow(1, t, 1), {}, &cache));
  EXPECT_EQ(cache.length(), seq);
  ASSERT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.keys[0].sizes(), (std::vector<int64_t>{ids.size(0), 2, seq, 16}));
  EXPECT_EQ(compare(torch::cat(parts, 1), full, kTol), "");
}

TEST_F(LlamaModelTest, KvCacheDecodeWithAdapterMatchesFullForward) {
  auto pm = peft::PeftModel::from_pretrained(model, golden("model-llama", "adapter"));
  at::Tensor row = ids.narrow(0, 0, 1);
  at::Tensor full = logits_of(*model, row);
  KVCache cache;
  std::vector<at::Tensor> parts;
  for (int64_t t = 0; t < row.size(1); ++t)
    parts.push_back(logits_of(*model, row.narrow(1, t, 1), {}, &cache));
  EXPECT_EQ(compare(torch::cat(parts, 1), full, kTol), "");
}

TEST_F(LlamaModelTest, LeftPaddedRowMatchesUnpaddedRow) {
  at::Tensor a = ids.narrow(0, 0, 1);
  const int64_t seq = a.size(1), pad = 3;
  ASSERT_GT(seq, pad + 1);
  at::Tensor b = a.narrow(1, 0, seq - pad);
  at::Tensor batch = torch::cat({a, torch::cat({torch::zeros({1, pad}, torch::kLong), b}, 1)}, 0);
  at::Tensor mask = torch::ones({2, seq}, torch::kLong);
  mask[1].narrow(0, 0, pad).fill_(0);
  at::Tensor out = logits_of(*model, batch, mask);
  EXPECT_EQ(compare(out[0], logits_of(*model, a)[0], kTol), "");
  EXPECT_EQ(compare(out[1].narrow(0, pad, seq - pad), logits_of(*model, b)[0], kTol), "");
  EXPECT_FALSE(out.isnan().any().item<bool>());
}

TEST_F(LlamaModelTest, LeftPaddedPrefillThenDecodeMatchesUnpadded) {
  at::Tensor a = ids.narrow(0, 0, 1);
  const int64_t seq = a.size(1), pad = 2;
  at::Tensor padded = torch::cat({torch::zeros({1, pad}, torch::kLong), a}, 1);
  at::Tensor mask = torch::ones({1, seq + pad}, torch::kLong);
  mask[0].narrow(0, 0, pad).fill_(0);
  KVCache cache;
  const int64_t prefill = pad + seq - 2;
  std::vector<at::Tensor> parts{
      logits_of(*model, padded.narrow(1, 0, prefill), mask.narrow(1, 0, prefill), &cache)
          .narrow(1, pad, seq - 2)};
  for (int64_t t = prefill; t < seq + pad; ++t) {
    parts.push_back(logits_of(*model, padded.narrow(1, t, 1), mask.narrow(1, 0, t + 1), &cache));
  }
  EXPECT_EQ(compare(torch::cat(parts, 1), logits_of(*model, a), kTol), "");
}

TEST_F(LlamaModelTest, ConcurrentForwardsWithSeparateCachesAgree) {
  at::Tensor expected = logits_of(*model, ids);
  std::vector<at::Tensor> results(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    threads.emplace_back([&, i] {
      KVCache cache;
      std::vector<at::Tensor> parts;
      for (int64_t t = 0; t < ids.size(1); ++t)
        parts.push_back(logits_of(*model, ids.narrow(1, t, 1), {}, &cache));
      results[i] = torch::cat(parts, 1);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_EQ(compare(r, expected, kTol), "");
}

TEST_F(LlamaModelTest, ReportsPeftModelInfo) {
  EXPECT_EQ(model->model_type(), "llama");
  EXPECT_EQ(model->class_name(), "LlamaForCausalLM");
  EXPECT_EQ(model->parent_library(), "transformers.models.llama.modeling_llama");
  EXPECT_EQ(model->default_target_modules(), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(model->output_embedding_name(), "lm_head");
  EXPECT_EQ(model->input_embedding_name(), "model.embed_tokens");
  EXPECT_EQ(model->num_hidden_layers(), 2);
  EXPECT_EQ(model->vocab_size(), 256);
  EXPECT_TRUE(model->tied_weights().empty());
  EXPECT_EQ(model->task(), peft::models::ModelTask::kCausalLm);
}

TEST_F(LlamaModelTest, DefaultTargetModulesAreQAndV) {
  peft::LoraConfig config;  // target_modules unset: PEFT's mapping for llama
  auto pm = peft::get_peft_model(model, config);
  EXPECT_EQ(pm->targeted_module_names("default"),
            (std::vector<std::string>{
                "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
}

// ---------------------------------------------------------------------------------------------------------------
// Models built from a config (random weights).

TEST(LlamaFromConfig, Qwen3HasPerHeadQkNormAndRunsForward) {
  auto config = tiny_config("qwen3");
  config["head_dim"] = 16;  // != hidden_size / heads
  config["attention_bias"] = true;
  auto model = build(config);
  EXPECT_EQ(model->class_name(), "Qwen3ForCausalLM");
  EXPECT_EQ(model->parent_library(), "transformers.models.qwen3.modeling_qwen3");
  auto params = model->named_parameters();
  EXPECT_EQ(params["model.layers.0.self_attn.q_norm.weight"].sizes(), (std::vector<int64_t>{16}));
  EXPECT_EQ(params["model.layers.1.self_attn.k_norm.weight"].sizes(), (std::vector<int64_t>{16}));
  EXPECT_EQ(params["model.layers.0.self_attn.q_proj.weight"].sizes(),
            (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(params["model.layers.0.self_attn.k_proj.weight"].sizes(),
            (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(params["model.layers.0.self_attn.o_proj.weight"].sizes(),
            (std::vector<int64_t>{32, 64}));
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.q_proj.bias"));
  at::Tensor out = logits_of(*model, random_ids(2, 5, 97));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 5, 97}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  // q_norm acts: changing its weight changes the logits.
  {
    torch::NoGradGuard no_grad;
    params["model.layers.0.self_attn.q_norm.weight"].mul_(3.0);
  }
  EXPECT_NE(compare(logits_of(*model, random_ids(2, 5, 97)), out, 1e-4), "");
}

TEST(LlamaFromConfig, Qwen2HasQkvBiasButNoOutputBias) {
  auto model = build(tiny_config("qwen2"));
  auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.k_proj.bias"));
  EXPECT_TRUE(params.contains("model.layers.0.self_attn.v_proj.bias"));
  EXPECT_FALSE(params.contains("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_FALSE(params.contains("model.layers.0.mlp.up_proj.bias"));
  EXPECT_EQ(model->class_name(), "Qwen2ForCausalLM");
}

TEST(LlamaFromConfig, MistralSlidingWindowLimitsAttention) {
  auto config = tiny_config("mistral");
  config["sliding_window"] = 3;
  auto windowed = build(config);
  config["sliding_window"] = nullptr;
  auto full = build(config);
  copy_weights(*windowed, *full);
  EXPECT_EQ(windowed->class_name(), "MistralForCausalLM");
  EXPECT_FALSE(windowed->named_parameters().contains("model.layers.0.self_attn.q_proj.bias"));
  at::Tensor ids = random_ids(1, 8, 97);
  at::Tensor a = logits_of(*windowed, ids), b = logits_of(*full, ids);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{1, 8, 97}));
  EXPECT_EQ(compare(a.narrow(1, 0, 3), b.narrow(1, 0, 3), 1e-6),
            "");  // within the window: identical
  EXPECT_NE(compare(a.narrow(1, 3, 5), b.narrow(1, 3, 5), 1e-4), "");
  // Decoding with the cache applies the same window.
  KVCache cache;
  std::vector<at::Tensor> parts;
  for (int64_t t = 0; t < 8; ++t)
    parts.push_back(logits_of(*windowed, ids.narrow(1, t, 1), {}, &cache));
  EXPECT_EQ(compare(torch::cat(parts, 1), a, kTol), "");
}

TEST(LlamaFromConfig, TiedEmbeddingsShareOneTensor) {
  auto config = tiny_config("llama");
  config["tie_word_embeddings"] = true;
  auto model = build(config);
  auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("lm_head.weight"));
  EXPECT_TRUE(params["lm_head.weight"].is_same(params["model.embed_tokens.weight"]));
  EXPECT_EQ(model->tied_weights(), (std::vector<std::pair<std::string, std::string>>{
                                       {"lm_head.weight", "model.embed_tokens.weight"}}));
  at::Tensor ids = random_ids(1, 6, 97);
  at::Tensor before = logits_of(*model, ids);

  // A checkpoint without lm_head.weight (as transformers saves tied models) loads into one shared
  // tensor.
  peft::test::TempDir dir;
  peft::io::save_checkpoint_tensors(*model, dir.str(), {"lm_head.weight"});
  peft::test::write_file(dir.str("config.json"), config.dump());
  auto loaded = peft::models::load_pretrained(dir.str());
  auto lp = loaded->named_parameters();
  EXPECT_TRUE(lp["lm_head.weight"].is_same(lp["model.embed_tokens.weight"]));
  EXPECT_EQ(compare(logits_of(*loaded, ids), before, 1e-6), "");

  // Casting keeps the tie (Module::to converts the shared tensor once).
  auto bf16 = peft::models::load_pretrained(dir.str(), {.dtype = torch::kBFloat16});
  auto bp = bf16->named_parameters();
  EXPECT_EQ(bp["lm_head.weight"].scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(bp["lm_head.weight"].is_same(bp["model.embed_tokens.weight"]));
  EXPECT_EQ(bp["lm_head.weight"].data_ptr(), bp["model.embed_tokens.weight"].data_ptr());
  at::Tensor bf16_logits = logits_of(*bf16, ids);
  EXPECT_EQ(bf16_logits.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(bf16_logits.isfinite().all().item<bool>());
}

TEST(LlamaFromConfig, Llama3RopeScalingRunsAndReducesToItsLimits) {
  auto config = tiny_config("llama");
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 32}};
  auto llama3 = build(config);
  at::Tensor ids = random_ids(2, 7, 97);
  EXPECT_EQ(logits_of(*llama3, ids).sizes(), (std::vector<int64_t>{2, 7, 97}));

  // Every wavelength above original_max / low_freq_factor: all frequencies divided = linear
  // scaling.
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 4.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 2.0},
                            {"original_max_position_embeddings", 4}};
  auto all_low = build(config);
  config["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};  // legacy key
  auto linear = build(config);
  // Every wavelength below original_max / high_freq_factor: unchanged = no scaling.
  config["rope_scaling"] = {{"rope_type", "llama3"},
                            {"factor", 4.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 2.0},
                            {"original_max_position_embeddings", 1000000000}};
  auto all_high = build(config);
  config["rope_scaling"] = nullptr;
  auto plain = build(config);
  for (auto* m : {all_low.get(), linear.get(), all_high.get()}) copy_weights(*plain, *m);
  at::Tensor base = logits_of(*plain, ids);
  EXPECT_EQ(compare(logits_of(*all_low, ids), logits_of(*linear, ids), 1e-6), "");
  EXPECT_EQ(compare(logits_of(*all_high, ids), base, 1e-6), "");
  EXPECT_NE(compare(logits_of(*linear, ids), base, 1e-4), "");
}

TEST(LlamaRope, InvFreqFollowsTransformers) {
  nlohmann::json config = {{"rope_theta", 10000.0},
                           {"rope_scaling",
                            {{"rope_type", "llama3"},
                             {"factor", 8.0},
                             {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0},
                             {"original_max_position_embeddings", 32}}}};
  peft::models::detail::ConfigReader reader(config, "llama");
  auto rope = peft::models::detail::make_rotary_embedding(reader, 16);
  ASSERT_EQ(rope.inv_freq.sizes(), (std::vector<int64_t>{8}));
  EXPECT_EQ(rope.inv_freq.scalar_type(), torch::kFloat);
  // transformers' _compute_llama3_parameters, in double.
  const double pi = 3.14159265358979323846;
  for (int64_t i = 0; i < 8; ++i) {
    const double f = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / 16.0);
    const double wavelen = 2 * pi / f;
    double expected = wavelen > 32.0 ? f / 8.0 : f;
    if (!(wavelen < 8.0) && !(wavelen > 32.0)) {
      const double smooth = (32.0 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * f / 8.0 + smooth * f;
    }
    EXPECT_NEAR(rope.inv_freq[i].item<double>(), expected, 1e-6 * expected) << "i = " << i;
  }
  // Medium band present in this setup (wavelength 2 pi * 10000^(1/8) ~ 19.9).
  EXPECT_GT(rope.inv_freq[1].item<double>(), 1.0 / std::pow(10000.0, 2.0 / 16.0) / 8.0 * 1.01);
}

TEST(LlamaFromConfig, BadConfigNamesTheField) {
  auto expect_error = [](nlohmann::json config, const std::string& field) {
    try {
      peft::models::from_config(config.dump());
      ADD_FAILURE() << "no ConfigError for " << field;
    } catch (const peft::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  auto c = tiny_config("llama");
  c.erase("hidden_size");
  expect_error(c, "hidden_size");
  c = tiny_config("llama");
  c["num_key_value_heads"] = 3;
  expect_error(c, "num_key_value_heads");
  c = tiny_config("qwen2");
  c["num_attention_heads"] = 5;
  c["num_key_value_heads"] = 1;
  expect_error(c, "hidden_size");
  c = tiny_config("llama");
  c["vocab_size"] = "many";
  expect_error(c, "vocab_size");
  c = tiny_config("llama");
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"low_freq_factor", 1.0}};
  expect_error(c, "rope_scaling.factor");
  c = tiny_config("llama");
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  EXPECT_THROW(peft::models::from_config(c.dump()), peft::UnsupportedError);
  c = tiny_config("llama");
  c["hidden_act"] = "gelu";
  EXPECT_THROW(peft::models::from_config(c.dump()), peft::UnsupportedError);
}

TEST(LlamaFromConfig, InvFreqIsNotInTheStateDict) {
  auto model = build(tiny_config("llama"));
  for (const auto& item : model->named_buffers())
    ADD_FAILURE() << "unexpected buffer " << item.key();
  for (const auto& item : model->named_parameters()) {
    EXPECT_EQ(item.key().find("rotary"), std::string::npos) << item.key();
  }
}

}  // namespace
