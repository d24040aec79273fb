// aLoRA (Activated LoRA, alora_invocation_tokens): PEFT's offsets, the per-position layer mask, a
// tiny Llama's logits, generation (decode steps adapted, prompt errors), the KV-cache reuse
// property (a base-model prefix cache serves an aLoRA generation; not a plain LoRA one), merge /
// Embedding refusals and `peft generate`.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "peft/error.h"
#include "peft/generate.h"
#include "peft/lora/embedding.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/linear.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::GenerationConfig;
using peft::PrefixCache;
using peft::models::ForwardInput;
using peft::models::KVCache;
using peft::models::PretrainedModel;
using peft::nn::ForwardContext;
using peft::nn::ForwardContextGuard;
using peft::test::compare;
using Rows = std::vector<std::vector<int64_t>>;
using Offsets = std::vector<std::optional<int64_t>>;

namespace {

const std::vector<int64_t> kInvocation = {90, 91};

std::shared_ptr<PretrainedModel> tiny_llama(uint64_t seed = 0) {
  const nlohmann::json config = {{"model_type", "llama"},    {"vocab_size", 97},
                                 {"hidden_size", 32},        {"intermediate_size", 48},
                                 {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
                                 {"rope_theta", 10000.0},    {"tie_word_embeddings", false}};
  torch::manual_seed(seed);
  auto model = peft::models::from_config(config.dump());
  model->eval();
  return model;
}

// LoRA on q/k/v with random A and B (init_lora_weights=False), aLoRA when `invocation` is given.
peft::LoraConfig lora_config(std::optional<std::vector<int64_t>> invocation,
                             std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj"}) {
  return peft::LoraConfig{.task_type = peft::TaskType::kCausalLm,
                          .r = 4,
                          .target_modules = std::move(targets),
                          .lora_alpha = 8,
                          .init_lora_weights = {.kind = peft::InitLoraWeights::Kind::kFalse},
                          .alora_invocation_tokens = std::move(invocation)};
}

std::shared_ptr<peft::PeftModel> adapt(const std::shared_ptr<PretrainedModel>& model, bool alora,
                                       uint64_t seed = 1) {
  torch::manual_seed(seed);
  return peft::get_peft_model(model,
                              lora_config(alora ? std::optional(kInvocation) : std::nullopt));
}

std::vector<int64_t> random_tokens(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  at::Tensor t = torch::randint(80, {n}, torch::kLong);  // below the invocation ids
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

std::vector<int64_t> cat(std::vector<std::vector<int64_t>> parts) {
  std::vector<int64_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

at::Tensor row_ids(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, torch::kLong).view({1, static_cast<int64_t>(ids.size())});
}

// Greedy decoding without a KV cache: every step runs the whole sequence, so each forward finds the
// invocation sequence in its own input_ids (PEFT's forward semantics), no generate() state
// involved.
std::vector<int64_t> greedy_without_cache(PretrainedModel& model, std::vector<int64_t> ids,
                                          int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor logits = model.forward(ForwardInput{row_ids(ids)});
    const int64_t t = logits[0][-1].argmax().item<int64_t>();
    out.push_back(t);
    ids.push_back(t);
  }
  return out;
}

// Next-token logits (vocab,) of `prompt` (one row) computed after `prefix`'s cache.
at::Tensor next_logits(PretrainedModel& model, const PrefixCache& prefix,
                       const std::vector<int64_t>& prompt) {
  torch::NoGradGuard no_grad;
  KVCache cache = prefix.cache;
  std::vector<int64_t> rest(prompt.begin() + static_cast<std::ptrdiff_t>(prefix.tokens[0].size()),
                            prompt.end());
  return model.forward(ForwardInput{row_ids(rest), {}, {}, &cache})[0][-1];
}

at::Tensor full_logits(PretrainedModel& model, const std::vector<int64_t>& prompt) {
  torch::NoGradGuard no_grad;
  return model.forward(ForwardInput{row_ids(prompt)})[0];
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

GenerationConfig greedy(int64_t n = 6) { return GenerationConfig{.max_new_tokens = n}; }

}  // namespace

TEST(Alora, OffsetsFollowPeftExamples) {
  using peft::nn::calculate_alora_offsets;
  EXPECT_EQ(calculate_alora_offsets(
                torch::tensor({0, 1, 2, 3, 0, 4, 5, 6}, torch::kLong).view({2, 4}), {1, 2}),
            (Offsets{3, std::nullopt}));
  EXPECT_EQ(calculate_alora_offsets(
                torch::tensor({1, 2, 1, 2, 0, 4, 1, 2}, torch::kLong).view({2, 4}), {1, 2}),
            (Offsets{2, 2}));
  EXPECT_EQ(calculate_alora_offsets(
                torch::tensor({1, 2, 3, 4, 0, 4, 1, 4}, torch::kLong).view({2, 4}), {1, 2}),
            (Offsets{4, std::nullopt}));
  // Left padding does not move an offset: it is counted from the end.
  EXPECT_EQ(
      calculate_alora_offsets(torch::tensor({0, 0, 9, 1, 2, 3}, torch::kLong).view({1, 6}), {1, 2}),
      (Offsets{3}));
}

TEST(Alora, LinearAdaptsFromTheInvocationOnPerRow) {
  torch::manual_seed(0);
  peft::nn::Linear lin(6, 5);
  peft::nn::AdapterSettings s;
  s.r = 2;
  s.lora_alpha = 4;
  s.init_lora_weights = {.kind = peft::InitLoraWeights::Kind::kFalse};
  s.alora_invocation_tokens = std::vector<int64_t>{7, 8};
  lin->update_layer("default", s);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({3, 6, 6});
  at::Tensor A, B;
  for (const auto& [key, t] : lin->adapter_tensors("default")) (key == "lora_A.weight" ? A : B) = t;
  const at::Tensor base = torch::linear(x, lin->weight(), lin->bias());
  const at::Tensor lora =
      base + torch::matmul(torch::matmul(x, A.t()), B.t()) * lin->scaling("default");
  ASSERT_GT(max_abs_diff(base, lora), 1e-3);

  // Invocation [7, 8] starts at t = 1 (row 0), t = 4 (row 1), nowhere (row 2).
  at::Tensor ids =
      torch::tensor({1, 7, 8, 2, 3, 4, 1, 2, 3, 4, 7, 8, 1, 2, 3, 4, 5, 6}, torch::kLong)
          .view({3, 6});
  at::Tensor y;
  {
    ForwardContextGuard guard(ForwardContext{ids, std::nullopt});
    y = lin->forward(x);
  }
  const int64_t starts[] = {1, 4, 6};
  for (int64_t row = 0; row < 3; ++row) {
    const int64_t p = starts[row];
    EXPECT_EQ(compare(y[row].narrow(0, 0, p), base[row].narrow(0, 0, p), 1e-6), "")
        << "row " << row;
    EXPECT_EQ(compare(y[row].narrow(0, p, 6 - p), lora[row].narrow(0, p, 6 - p), 1e-5), "")
        << "row " << row;
  }
  // No context: no offsets, no adaptation (PEFT: alora_offsets None).
  EXPECT_EQ(compare(lin->forward(x), base, 1e-6), "");
  // Explicit offsets with T = 1 (a decode step): every row with an offset is adapted.
  {
    ForwardContextGuard guard(ForwardContext{{}, Offsets{5, std::nullopt, 1}});
    at::Tensor step = lin->forward(x.narrow(1, 5, 1));
    EXPECT_EQ(compare(step[0], lora[0].narrow(0, 5, 1), 1e-5), "");
    EXPECT_EQ(compare(step[1], base[1].narrow(0, 5, 1), 1e-6), "");
    EXPECT_EQ(compare(step[2], lora[2].narrow(0, 5, 1), 1e-5), "");
    // 2-D input (batch, in): T = 1 as well.
    at::Tensor flat = lin->forward(x.select(1, 5));
    EXPECT_EQ(compare(flat[1], base[1][5], 1e-6), "");
    EXPECT_EQ(compare(flat[2], lora[2][5], 1e-5), "");
  }
}

TEST(Alora, LlamaLogitsBeforeTheInvocationAreTheBaseModels) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  for (const auto& [name, layer] : peft::nn::lora_layers(*model)) {
    if (layer->has_adapter("default")) {
      ASSERT_EQ(layer->adapter_settings("default").alora_invocation_tokens, kInvocation) << name;
    }
  }
  const std::vector<int64_t> prompt = cat({random_tokens(7, 3), kInvocation, {4, 5, 6}});
  const at::Tensor adapted = full_logits(*model, prompt);
  at::Tensor base;
  {
    auto off = pm->disable_adapter();
    base = full_logits(*model, prompt);
  }
  EXPECT_EQ(compare(adapted.narrow(0, 0, 7), base.narrow(0, 0, 7), 1e-6), "");
  for (int64_t t = 7; t < 12; ++t)
    EXPECT_GT(max_abs_diff(adapted[t], base[t]), 1e-4) << "position " << t;
  // Without the invocation sequence the adapter does not act at all.
  const std::vector<int64_t> plain = random_tokens(9, 4);
  at::Tensor plain_base;
  {
    auto off = pm->disable_adapter();
    plain_base = full_logits(*model, plain);
  }
  EXPECT_EQ(compare(full_logits(*model, plain), plain_base, 1e-6), "");
}

TEST(Alora, GenerationAdaptsPrefillAndEveryDecodedToken) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  const Rows prompts = {cat({random_tokens(5, 11), kInvocation, {3}}),
                        cat({random_tokens(2, 12), kInvocation}),
                        cat({random_tokens(8, 13), kInvocation, kInvocation, {1, 2}})};
  const Rows batched = peft::generate(*model, prompts, greedy(8));
  for (size_t row = 0; row < prompts.size(); ++row) {
    // The KV-cached, left-padded batch equals recomputing the whole sequence at every step.
    EXPECT_EQ(batched[row], greedy_without_cache(*model, prompts[row], 8)) << "row " << row;
    EXPECT_EQ(peft::generate(*model, {prompts[row]}, greedy(8))[0], batched[row]) << "row " << row;
  }
  // The adapter changes the continuation (else this test would prove nothing).
  Rows base;
  {
    auto off = pm->disable_adapter();
    base = peft::generate(*model, prompts, greedy(8));
  }
  EXPECT_NE(base, batched);
  // Caller-installed offsets are used as given (PEFT's alora_offsets argument): none = base model.
  {
    ForwardContextGuard guard(ForwardContext{{}, Offsets(3, std::nullopt)});
    EXPECT_EQ(peft::generate(*model, prompts, greedy(8)), base);
  }
}

TEST(Alora, PromptWithoutInvocationIsAConfigError) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  const Rows prompts = {cat({random_tokens(4, 5), kInvocation}), random_tokens(6, 6)};
  try {
    (void)peft::generate(*model, prompts, greedy());
    FAIL() << "expected ConfigError";
  } catch (const peft::ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("prompt 1 "), std::string::npos) << msg;
    EXPECT_EQ(msg.find("prompt 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[90, 91]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("hint: append the invocation string"), std::string::npos) << msg;
  }
  // Only a whole occurrence counts.
  EXPECT_THROW((void)peft::generate(*model, {{1, 2, 90}}, greedy()), peft::ConfigError);
  // Adapters disabled, or a plain LoRA adapter: no invocation needed, nothing changes.
  {
    auto off = pm->disable_adapter();
    EXPECT_NO_THROW((void)peft::generate(*model, prompts, greedy()));
  }
  auto lora_model = tiny_llama();
  auto lora = adapt(lora_model, /*alora=*/false);
  EXPECT_NO_THROW((void)peft::generate(*lora_model, prompts, greedy()));
}

TEST(Alora, BaseModelPrefixCacheIsReusedByAlora) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  const std::vector<int64_t> prefix0 = random_tokens(7, 21), prefix1 = random_tokens(4, 22);
  const Rows prompts = {cat({prefix0, kInvocation, {5, 6}}), cat({prefix1, {3}, kInvocation, {8}})};
  PrefixCache cached;
  {
    auto off = pm->disable_adapter();  // PEFT: with model.disable_adapter(): model(prefix,
                                       // past_key_values=cache)
    cached = peft::prefill(*model, {prefix0, prefix1});
  }
  ASSERT_EQ(cached.length(), 7);
  ASSERT_TRUE(cached.attention_mask.defined());  // row 1 is left-padded
  const Rows full = peft::generate(*model, prompts, greedy(8));
  EXPECT_EQ(peft::generate(*model, cached, prompts, greedy(8)), full);
  // The cache is copied, not consumed: reuse it, and for each row alone.
  EXPECT_EQ(peft::generate(*model, cached, prompts, greedy(8)), full);
  for (size_t row = 0; row < prompts.size(); ++row) {
    PrefixCache one;
    {
      auto off = pm->disable_adapter();
      const auto end = prompts[row].begin() + (row == 0 ? 7 : 4);
      one = peft::prefill(*model, Rows{std::vector<int64_t>(prompts[row].begin(), end)});
    }
    EXPECT_EQ(peft::generate(*model, one, {prompts[row]}, greedy(8))[0], full[row])
        << "row " << row;
    EXPECT_EQ(greedy_without_cache(*model, prompts[row], 8), full[row]) << "row " << row;
    // Next-token logits from the base cache equal the full aLoRA forward's.
    EXPECT_EQ(compare(next_logits(*model, one, prompts[row]), full_logits(*model, prompts[row])[-1],
                      1e-5),
              "");
  }
  // The aLoRA prefill's cache of the prefix IS the base model's (the adapter starts at the
  // invocation).
  const PrefixCache adapted = peft::prefill(*model, {prompts[0]});
  PrefixCache base;
  {
    auto off = pm->disable_adapter();
    base = peft::prefill(*model, {prompts[0]});
  }
  for (size_t l = 0; l < adapted.cache.keys.size(); ++l) {
    EXPECT_EQ(
        compare(adapted.cache.keys[l].narrow(2, 0, 7), base.cache.keys[l].narrow(2, 0, 7), 1e-6),
        "");
    EXPECT_EQ(compare(adapted.cache.values[l].narrow(2, 0, 7), base.cache.values[l].narrow(2, 0, 7),
                      1e-6),
              "");
    EXPECT_GT(
        max_abs_diff(adapted.cache.keys[l].narrow(2, 7, 4), base.cache.keys[l].narrow(2, 7, 4)),
        1e-4);
  }
}

TEST(Alora, PlainLoraPrefixCacheIsNotTheBaseModels) {
  // The counter-case: a LoRA adapter acts on every position, so its cache of the prefix differs
  // from the base model's, and a base-model prefix cache changes its output.
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/false);
  const std::vector<int64_t> prefix = random_tokens(7, 21);
  const std::vector<int64_t> prompt = cat({prefix, kInvocation, {5, 6}});
  PrefixCache base;
  {
    auto off = pm->disable_adapter();
    base = peft::prefill(*model, {prefix});
  }
  const PrefixCache own = peft::prefill(*model, {prefix});
  for (size_t l = 0; l < own.cache.keys.size(); ++l) {
    EXPECT_GT(max_abs_diff(own.cache.keys[l], base.cache.keys[l]), 1e-3) << "layer " << l;
  }
  const at::Tensor expected = full_logits(*model, prompt)[-1];
  EXPECT_GT(max_abs_diff(next_logits(*model, base, prompt), expected), 1e-3);
  // With its own prefix cache, reuse is exact for LoRA too.
  EXPECT_EQ(compare(next_logits(*model, own, prompt), expected, 1e-5), "");
  EXPECT_EQ(peft::generate(*model, own, {prompt}, greedy(8)),
            peft::generate(*model, {prompt}, greedy(8)));
}

TEST(Alora, PrefixCacheMustMatchThePrompts) {
  auto model = tiny_llama();
  const PrefixCache cached = peft::prefill(*model, {{1, 2, 3}, {4, 5}});
  EXPECT_THROW((void)peft::generate(*model, cached, {{1, 2, 3, 4}}, greedy()),
               peft::ShapeMismatchError);
  EXPECT_THROW((void)peft::generate(*model, cached, {{1, 2, 3}, {4, 5, 6}}, greedy()),
               peft::ShapeMismatchError);
  EXPECT_THROW((void)peft::generate(*model, cached, {{1, 2, 9, 4}, {4, 5, 6}}, greedy()),
               peft::ShapeMismatchError);
  EXPECT_THROW((void)peft::prefill(*model, {{1, 2}, {}}), peft::ShapeMismatchError);
  EXPECT_EQ(peft::generate(*model, cached, {{1, 2, 3, 4}, {4, 5, 6}}, greedy()),
            peft::generate(*model, {{1, 2, 3, 4}, {4, 5, 6}}, greedy()));
}

TEST(Alora, ActiveAdaptersNeedOneInvocationSequence) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  pm->add_adapter("other", lora_config(std::vector<int64_t>{92}));
  pm->set_adapters({"default", "other"}, /*inference_mode=*/true);
  EXPECT_THROW((void)peft::generate(*model, {cat({{1}, kInvocation, {92}})}, greedy()),
               peft::UnsupportedError);
  pm->set_adapter("other", /*inference_mode=*/true);
  EXPECT_NO_THROW((void)peft::generate(*model, {{1, 2, 92}}, greedy()));
}

// Gradient checkpointing recomputes each layer in backward, outside the model's forward: the aLoRA
// mask must be the forward's, so the gradients equal those of a run without checkpointing.
TEST(Alora, GradientCheckpointingKeepsTheInvocationMask) {
  std::vector<std::map<std::string, at::Tensor>> grads;
  for (bool checkpointing : {false, true}) {
    auto model = tiny_llama();
    auto pm = adapt(model, true);
    model->train();
    if (checkpointing) model->gradient_checkpointing_enable();
    peft::models::ForwardInput in;
    in.input_ids = row_ids(cat({random_tokens(5, 3), kInvocation, random_tokens(3, 4)}));
    model->forward(in).pow(2).mean().backward();
    std::map<std::string, at::Tensor> g;
    for (auto& p : model->named_parameters()) {
      if (p.value().grad().defined()) g[p.key()] = p.value().grad().clone();
    }
    grads.push_back(std::move(g));
  }
  ASSERT_FALSE(grads[0].empty());
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (const auto& [name, g] : grads[0]) {
    EXPECT_LT(max_abs_diff(grads[1].at(name), g), 1e-5) << name;
  }
}

TEST(Alora, MergingIsRefused) {
  auto model = tiny_llama();
  auto pm = adapt(model, /*alora=*/true);
  EXPECT_THROW(pm->merge_adapter(), peft::UnsupportedError);
  EXPECT_THROW((void)pm->merge_and_unload(), peft::UnsupportedError);
}

TEST(Alora, EmbeddingTargetIsRefused) {
  peft::nn::Embedding emb(10, 4);
  peft::nn::AdapterSettings s;
  s.alora_invocation_tokens = std::vector<int64_t>{1};
  EXPECT_THROW(emb->update_layer("default", s), peft::UnsupportedError);
  auto model = tiny_llama();
  EXPECT_THROW((void)peft::get_peft_model(model, lora_config(kInvocation, {"embed_tokens"})),
               peft::UnsupportedError);
}

// `peft generate` with an aLoRA adapter folder: the golden tiny Llama with a byte-level tokenizer
// and its adapter re-declared as aLoRA, invoked by "##" (byte 35 twice).
TEST(Alora, CliGenerateNeedsTheInvocationInThePrompt) {
  peft::test::TempDir tmp;
  const fs::path case_dir = peft::test::fixture("golden/model-llama");
  const fs::path model = tmp.path() / "model", adapter = tmp.path() / "adapter";
  fs::create_directories(model);
  fs::create_directories(adapter);
  for (const auto& e : fs::directory_iterator(case_dir / "base"))
    fs::copy_file(e.path(), model / e.path().filename());
  for (const auto& e : fs::directory_iterator(case_dir / "adapter")) {
    fs::copy_file(e.path(), adapter / e.path().filename());
  }
  auto config =
      nlohmann::json::parse(peft::test::read_file((adapter / "adapter_config.json").string()));
  config["alora_invocation_tokens"] = {35, 35};
  config["task_type"] = "CAUSAL_LM";
  peft::test::write_file((adapter / "adapter_config.json").string(), config.dump());
  peft::test::write_file((model / "tokenizer.json").string(),
                         peft::test::byte_level_tokenizer().dump());
  const std::string common =
      "generate --model '" + model.string() + "' --adapter '" + adapter.string() + "'";
  auto bad = peft::test::peft_cli(common + " --prompt 'Hello' --max-new-tokens 4 --stop-token 255");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_EQ(bad.output.rfind("error: ", 0), 0u) << bad.output;
  EXPECT_NE(bad.output.find("[35, 35]"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("\"##\""), std::string::npos) << bad.output;
  auto ok =
      peft::test::peft_cli(common + " --prompt 'Hello ##' --max-new-tokens 4 --stop-token 255");
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_EQ(ok.output.rfind("Hello ##", 0), 0u) << ok.output;
}
