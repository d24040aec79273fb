// trainable_token_indices (PEFT TrainableTokensLayer) on the model zoo's Llama, and the
// weight-tying tables of PEFT's LoRA docs for trainable tokens and modules_to_save.
#include "peft/lora/trainable_tokens.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;

namespace {

std::shared_ptr<peft::models::PretrainedModel> llama(bool tied, uint64_t seed = 0) {
  nlohmann::json c = {
      {"model_type", "llama"},    {"vocab_size", 50},       {"hidden_size", 16},
      {"intermediate_size", 24},  {"num_hidden_layers", 1}, {"num_attention_heads", 2},
      {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},   {"tie_word_embeddings", tied}};
  torch::manual_seed(seed);
  auto m = peft::models::from_config(c.dump());
  m->eval();
  return m;
}

std::shared_ptr<peft::nn::LoraLayerImpl> layer(torch::nn::Module& m, const std::string& name) {
  for (auto& [n, l] : peft::nn::lora_layers(m)) {
    if (n == name) return l;
  }
  return nullptr;
}

// The layer's trainable-token slot / modules_to_save copy / tied LoRA for `adapter` (PEFT's
// wrappers).
bool has_tokens(const std::shared_ptr<peft::nn::LoraLayerImpl>& l, const std::string& adapter) {
  return l->trainable_tokens() && l->trainable_tokens()->has(adapter);
}
bool tokens_tied(const std::shared_ptr<peft::nn::LoraLayerImpl>& l, const std::string& adapter) {
  return l->trainable_tokens() && l->trainable_tokens()->tied(adapter);
}
bool has_copy(const std::shared_ptr<peft::nn::LoraLayerImpl>& l, const std::string& adapter) {
  return l->modules_to_save() && l->modules_to_save()->contains(adapter);
}
at::Tensor copy_weight(const std::shared_ptr<peft::nn::LoraLayerImpl>& l,
                       const std::string& adapter) {
  return l->modules_to_save()->copy(adapter)->weight;
}
// A LoRA adapter that uses another layer's factors (the tied output head) has no tensors of its
// own.
bool lora_tied(const std::shared_ptr<peft::nn::LoraLayerImpl>& l, const std::string& adapter) {
  return l->has_adapter(adapter) && l->adapter_tensors(adapter).empty();
}

LoraConfig tokens_config(peft::TrainableTokenIndices idx, bool ensure = false) {
  LoraConfig c;
  c.r = 2;
  c.target_modules = std::vector<std::string>{"q_proj"};
  c.trainable_token_indices = std::move(idx);
  c.ensure_weight_tying = ensure;
  return c;
}

at::Tensor logits(peft::models::PretrainedModel& m, const at::Tensor& ids) {
  peft::models::ForwardInput in;
  in.input_ids = ids;
  return m.forward(in);
}

TEST(TrainableTokens, OnlyTheChosenRowsChangeAndMergeWritesThem) {
  auto m = llama(false);
  const at::Tensor ids = torch::tensor({{1, 3, 5, 2, 9}});
  const at::Tensor w0 = layer(*m, "model.embed_tokens")->weight().clone();
  auto pm = peft::get_peft_model(m, tokens_config(std::vector<int64_t>{3, 5}));
  auto emb = layer(*m, "model.embed_tokens");
  at::Tensor delta = emb->trainable_tokens()->delta("default");
  EXPECT_TRUE(delta.requires_grad());
  EXPECT_TRUE(at::equal(delta, w0.index_select(0, torch::tensor({3, 5}))));  // a copy of the rows
  const at::Tensor base = logits(*m, ids).detach();
  {
    torch::NoGradGuard no_grad;
    delta.add_(torch::randn_like(delta));
  }
  torch::NoGradGuard no_grad;
  const at::Tensor adapted = logits(*m, ids);
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);
  // Tokens other than 3 and 5 keep their embedding: a prompt without them gives the base logits.
  const at::Tensor other = torch::tensor({{1, 2, 9}});
  { auto g = pm->disable_adapter(); }
  pm->merge_adapter();
  EXPECT_EQ(compare(logits(*m, ids), adapted, 1e-5), "");
  at::Tensor merged = emb->weight().clone();
  EXPECT_TRUE(at::equal(merged.index_select(0, torch::tensor({3, 5})), delta));
  EXPECT_TRUE(at::equal(merged.index_select(0, torch::tensor({0, 1, 2, 4})),
                        w0.index_select(0, torch::tensor({0, 1, 2, 4}))));
  pm->unmerge_adapter();
  EXPECT_TRUE(at::equal(emb->weight(), w0));
  (void)other;
}

TEST(TrainableTokens, SavedUnderPeftsKeyAndLoadedBack) {
  peft::test::TempDir dir;
  auto m = llama(false);
  auto pm = peft::get_peft_model(m, tokens_config(std::vector<int64_t>{4, 7, 8}));
  {
    torch::NoGradGuard no_grad;
    layer(*m, "model.embed_tokens")->trainable_tokens()->delta("default").mul_(3.0);
  }
  const at::Tensor ids = torch::tensor({{4, 7, 8, 1}});
  const at::Tensor out = logits(*m, ids).detach();
  pm->save_pretrained(dir.str());
  auto file = peft::io::load_safetensors(dir.str("adapter_model.safetensors"));
  ASSERT_TRUE(
      file.count("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"));
  EXPECT_EQ(
      file.at("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta").sizes(),
      (std::vector<int64_t>{3, 16}));
  auto fresh = llama(false);
  auto loaded = peft::PeftModel::from_pretrained(fresh, dir.str());
  EXPECT_TRUE(at::equal(logits(*fresh, ids), out));
}

// Tied weights: the lm_head shares the embedding's delta (docs table: "Tied trainable tokens"), and
// it is saved once.
TEST(TrainableTokens, TiedLmHeadSharesTheDelta) {
  peft::test::TempDir dir;
  auto m = llama(true);
  auto pm = peft::get_peft_model(m, tokens_config(std::vector<int64_t>{3, 5}));
  auto emb = layer(*m, "model.embed_tokens");
  auto head = layer(*m, "lm_head");
  ASSERT_TRUE(has_tokens(head, "default"));
  EXPECT_TRUE(tokens_tied(head, "default"));
  EXPECT_TRUE(head->trainable_tokens()->delta("default").is_same(
      emb->trainable_tokens()->delta("default")));
  {
    torch::NoGradGuard no_grad;
    emb->trainable_tokens()->delta("default").add_(1.0);
  }
  // The head's logits for tokens 3 and 5 use the new rows: h . row.
  torch::NoGradGuard no_grad;
  const at::Tensor ids = torch::tensor({{1, 2}});
  at::Tensor out = logits(*m, ids);
  auto guard = pm->disable_adapter();
  at::Tensor base = logits(*m, ids);
  EXPECT_GT((out.select(2, 3) - base.select(2, 3)).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(compare(out.select(2, 4), base.select(2, 4), 1e-6), "") << "untouched vocabulary rows";
  pm->save_pretrained(dir.str());
  auto file = peft::io::load_safetensors(dir.str("adapter_model.safetensors"));
  for (const auto& [k, v] : file) EXPECT_EQ(k.find("lm_head"), std::string::npos) << k;
}

using Dict = std::vector<std::pair<std::string, std::vector<int64_t>>>;

TEST(WeightTyingTable, TrainableTokens) {
  {  // untied + ensure: warn, embeddings only
    peft::ScopedWarningCapture w;
    auto m = llama(false);
    auto pm = peft::get_peft_model(m, tokens_config(std::vector<int64_t>{1, 2}, true));
    EXPECT_TRUE(w.contains("not tied"));
    EXPECT_FALSE(has_tokens(layer(*m, "lm_head"), "default"));
  }
  {  // untied, dict with both: separate
    auto m = llama(false);
    auto pm =
        peft::get_peft_model(m, tokens_config(Dict{{"lm_head", {1, 2}}, {"embed_tokens", {1, 2}}}));
    EXPECT_TRUE(has_tokens(layer(*m, "lm_head"), "default"));
    EXPECT_FALSE(tokens_tied(layer(*m, "lm_head"), "default"));
  }
  {  // tied, same indices: tied
    auto m = llama(true);
    auto pm =
        peft::get_peft_model(m, tokens_config(Dict{{"lm_head", {1, 2}}, {"embed_tokens", {1, 2}}}));
    EXPECT_TRUE(tokens_tied(layer(*m, "lm_head"), "default"));
  }
  {  // tied, different indices, no ensure: separate
    auto m = llama(true);
    auto pm =
        peft::get_peft_model(m, tokens_config(Dict{{"lm_head", {1, 2}}, {"embed_tokens", {3, 4}}}));
    EXPECT_FALSE(tokens_tied(layer(*m, "lm_head"), "default"));
    EXPECT_EQ(layer(*m, "lm_head")->trainable_tokens()->indices("default"),
              (std::vector<int64_t>{1, 2}));
  }
  {  // tied, different indices, ensure: error
    auto m = llama(true);
    EXPECT_THROW(peft::get_peft_model(
                     m, tokens_config(Dict{{"lm_head", {1, 2}}, {"embed_tokens", {3, 4}}}, true)),
                 peft::ConfigError);
  }
}

TEST(WeightTyingTable, ModulesToSave) {
  auto mts = [](std::vector<std::string> modules, bool ensure) {
    LoraConfig c;
    c.target_modules = std::vector<std::string>{"q_proj"};
    c.modules_to_save = std::move(modules);
    c.ensure_weight_tying = ensure;
    return c;
  };
  {  // tied + ensure + one of them: both wrapped, copies tied
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, mts({"embed_tokens"}, true));
    auto emb = layer(*m, "model.embed_tokens"), head = layer(*m, "lm_head");
    ASSERT_TRUE(has_copy(head, "default"));
    EXPECT_TRUE(copy_weight(head, "default").is_same(copy_weight(emb, "default")));
  }
  {  // tied, no ensure, one: separate (only the selected one)
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, mts({"embed_tokens"}, false));
    EXPECT_FALSE(has_copy(layer(*m, "lm_head"), "default"));
  }
  {  // tied, no ensure, both: warn, separate
    peft::ScopedWarningCapture w;
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, mts({"embed_tokens", "lm_head"}, false));
    EXPECT_TRUE(w.contains("ensure_weight_tying=False"));
    EXPECT_FALSE(copy_weight(layer(*m, "lm_head"), "default")
                     .is_same(copy_weight(layer(*m, "model.embed_tokens"), "default")));
  }
  {  // untied + ensure: warn
    peft::ScopedWarningCapture w;
    auto m = llama(false);
    auto pm = peft::get_peft_model(m, mts({"lm_head"}, true));
    EXPECT_TRUE(w.contains("not tied"));
  }
}

TEST(WeightTyingTable, TargetModules) {
  auto lora = [](std::vector<std::string> targets, bool ensure) {
    LoraConfig c;
    c.r = 4;
    c.target_modules = std::move(targets);
    c.ensure_weight_tying = ensure;
    c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;  // non-zero deltas
    return c;
  };
  const at::Tensor ids = torch::tensor({{1, 3, 5, 2, 9, 4}});
  {  // tied + ensure, only lm_head named: one LoRA on the embedding, the head tied to it
    peft::test::TempDir dir;
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, lora({"lm_head"}, true));
    auto emb = layer(*m, "model.embed_tokens"), head = layer(*m, "lm_head");
    ASSERT_TRUE(emb->has_adapter("default"));
    ASSERT_TRUE(lora_tied(head, "default"));
    EXPECT_TRUE(at::equal(head->get_delta_weight("default"), emb->get_delta_weight("default")));
    torch::NoGradGuard no_grad;
    const at::Tensor out = logits(*m, ids);
    // Reference: the tied model with the embedding's delta applied to the shared weight, once.
    auto ref = llama(true);
    layer(*ref, "model.embed_tokens")->weight().add_(emb->get_delta_weight("default"));
    EXPECT_EQ(compare(out, logits(*ref, ids), 1e-4), "");
    pm->save_pretrained(dir.str());
    for (const auto& [k, v] : peft::io::load_safetensors(dir.str("adapter_model.safetensors"))) {
      EXPECT_EQ(k.find("lm_head"), std::string::npos) << k;
    }
    auto fresh = llama(true);
    auto loaded = peft::PeftModel::from_pretrained(fresh, dir.str());
    EXPECT_TRUE(lora_tied(layer(*fresh, "lm_head"), "default"));
    EXPECT_EQ(compare(logits(*fresh, ids), out, 1e-6), "");
    pm->merge_and_unload();  // the shared weight receives the delta once
    EXPECT_EQ(compare(logits(*m, ids), out, 1e-4), "");
  }
  {  // tied, no ensure, both: warn, separate adapters
    peft::ScopedWarningCapture w;
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, lora({"embed_tokens", "lm_head"}, false));
    EXPECT_TRUE(w.contains("ensure_weight_tying=False"));
    EXPECT_FALSE(lora_tied(layer(*m, "lm_head"), "default"));
    EXPECT_TRUE(layer(*m, "lm_head")->has_adapter("default"));
  }
  {  // tied, no ensure, one: separate, no warning
    peft::ScopedWarningCapture w;
    auto m = llama(true);
    auto pm = peft::get_peft_model(m, lora({"lm_head"}, false));
    EXPECT_FALSE(layer(*m, "model.embed_tokens")->has_adapter("default"));
    EXPECT_TRUE(w.messages().empty());
  }
  {  // untied + ensure: warn, selected layer only
    peft::ScopedWarningCapture w;
    auto m = llama(false);
    auto pm = peft::get_peft_model(m, lora({"lm_head"}, true));
    EXPECT_TRUE(w.contains("not tied"));
    EXPECT_FALSE(layer(*m, "model.embed_tokens")->has_adapter("default"));
    EXPECT_FALSE(lora_tied(layer(*m, "lm_head"), "default"));
  }
}

TEST(TrainableTokens, ErrorsNameTheProblem) {
  auto m = llama(false);
  EXPECT_THROW(peft::get_peft_model(m, tokens_config(Dict{{"no_such_module", {1}}})),
               peft::ConfigError);
  auto m2 = llama(false);
  EXPECT_THROW(peft::get_peft_model(m2, tokens_config(std::vector<int64_t>{50})),
               peft::ConfigError);
  auto m3 = llama(false);
  LoraConfig c = tokens_config(std::vector<int64_t>{1});
  c.modules_to_save = std::vector<std::string>{"embed_tokens"};
  EXPECT_THROW(peft::get_peft_model(m3, c), peft::ConfigError);
}

}  // namespace
