// layer_replication (PEFT replicate_layers): the replicated layer list shares its sources'
// parameter tensors, computes what a model with duplicated weights computes (forward, KV cache,
// generation, gradient checkpointing) for every family of the model zoo, gets one LoRA per copy
// through get_peft_model, updates config.json, and rejects bad ranges.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "peft/config.h"
#include "peft/error.h"
#include "peft/generate.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/loss.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::KVCache;
using peft::models::PretrainedModel;
using peft::test::compare;
using Ranges = std::vector<std::pair<int64_t, int64_t>>;

namespace {

constexpr double kAtol = 1e-5;

nlohmann::json llama_config(const std::string& type = "llama", int64_t layers = 2) {
  return {{"model_type", type},          {"vocab_size", 97},
          {"hidden_size", 32},           {"intermediate_size", 48},
          {"num_hidden_layers", layers}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},       {"tie_word_embeddings", false}};
}

nlohmann::json gpt2_config() {
  return {{"model_type", "gpt2"},
          {"vocab_size", 97},
          {"n_positions", 64},
          {"n_embd", 32},
          {"n_layer", 3},
          {"n_head", 4},
          {"scale_attn_by_inverse_layer_idx", true}};
}

nlohmann::json bert_config(const std::string& type) {
  return {{"model_type", type},
          {"architectures",
           {type == "bert" ? "BertForSequenceClassification" : "RobertaForSequenceClassification"}},
          {"vocab_size", 97},
          {"hidden_size", 32},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"intermediate_size", 48},
          {"max_position_embeddings", 40},
          {"num_labels", 3}};
}

std::shared_ptr<PretrainedModel> build(const nlohmann::json& config, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto model = peft::models::from_config(config.dump());
  model->eval();
  return model;
}

std::map<std::string, at::Tensor> params_of(const torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value();
  return out;
}

// A model with the replicated model's (updated) config.json and a separate copy of every tensor:
// what replication must compute, with the weights duplicated.
std::shared_ptr<PretrainedModel> duplicated(const PretrainedModel& replicated) {
  auto ref = peft::models::from_config(replicated.config_json());
  ref->eval();
  torch::NoGradGuard no_grad;
  const auto src = params_of(replicated);
  for (auto& item : ref->named_parameters()) item.value().copy_(src.at(item.key()));
  return ref;
}

// Every base parameter of new layer i (under `list`) is the very tensor of original layer
// sources[i]; every other one is unchanged.
void expect_shared(const PretrainedModel& model, const std::map<std::string, at::Tensor>& before,
                   const std::string& list, const std::vector<int64_t>& sources) {
  const auto after = params_of(model);
  size_t checked = 0;
  for (const auto& [name, t] : after) {
    if (name.find(".lora_") != std::string::npos) continue;  // adapters: checked elsewhere
    if (name.rfind(list + ".", 0) != 0) {
      EXPECT_EQ(t.unsafeGetTensorImpl(), before.at(name).unsafeGetTensorImpl()) << name;
      continue;
    }
    const std::string rest = name.substr(list.size() + 1);
    const auto dot = rest.find('.');
    const auto i = static_cast<size_t>(std::stoll(rest.substr(0, dot)));
    ASSERT_LT(i, sources.size()) << name;
    const std::string src = list + "." + std::to_string(sources[i]) + rest.substr(dot);
    EXPECT_EQ(t.unsafeGetTensorImpl(), before.at(src).unsafeGetTensorImpl())
        << name << " vs " << src;
    ++checked;
  }
  size_t per_layer = 0;
  for (const auto& [name, t] : before) per_layer += name.rfind(list + ".0.", 0) == 0 ? 1 : 0;
  EXPECT_EQ(checked, per_layer * sources.size());
  // The forward reads the layers' members: they must be the registered tensors too.
  for (const auto& [name, layer] : peft::nn::lora_layers(const_cast<PretrainedModel&>(model))) {
    EXPECT_EQ(layer->weight().unsafeGetTensorImpl(),
              after.at(name + ".weight").unsafeGetTensorImpl())
        << name;
  }
}

std::vector<std::string> children_names(PretrainedModel& model, const std::string& list) {
  std::vector<std::string> out;
  for (const auto& item : model.named_modules()) {
    if (item.key().rfind(list + ".", 0) == 0 &&
        item.key().find('.', list.size() + 1) == std::string::npos) {
      out.push_back(item.key());
    }
  }
  return out;
}

at::Tensor logits(PretrainedModel& m, const at::Tensor& ids, KVCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  return m.forward(ForwardInput{ids, {}, {}, cache});
}

at::Tensor random_ids(int64_t batch, int64_t seq, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randint(1, 97, {batch, seq}, torch::kLong);
}

// Non-zero, different values in every adapter tensor (default init leaves B = 0).
void randomize_adapters(peft::PeftModel& peft, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : peft::nn::lora_layers(peft.base_model())) {
    for (auto& [key, t] : layer->adapter_tensors("default")) t.copy_(torch::randn_like(t) * 0.1);
  }
}

peft::LoraConfig lora_config(std::optional<Ranges> replication, double dropout = 0.0) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = dropout;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
  c.layer_replication = std::move(replication);
  return c;
}

int64_t numel(const std::map<std::string, at::Tensor>& params) {
  int64_t n = 0;
  for (const auto& [k, t] : params) n += t.numel();
  return n;
}

// ---------------------------------------------------------------------------------------------

TEST(LayerReplication, LlamaPeftExampleSharesSourceParameters) {
  auto model = build(llama_config());
  const auto before = params_of(*model);
  model->replicate_layers({{0, 1}, {0, 2}, {1, 2}});  // PEFT's test: 2 layers -> [0, 0, 1, 1]
  EXPECT_EQ(model->num_hidden_layers(), 4);
  EXPECT_EQ(children_names(*model, "model.layers"),
            (std::vector<std::string>{"model.layers.0", "model.layers.1", "model.layers.2",
                                      "model.layers.3"}));
  expect_shared(*model, before, "model.layers", {0, 0, 1, 1});
  // New module objects (one LoRA per copy is possible), shared tensors.
  auto mods = model->named_modules();
  EXPECT_NE(mods["model.layers.0.self_attn.q_proj"].get(),
            mods["model.layers.1.self_attn.q_proj"].get());
  EXPECT_FALSE(mods["model.layers.0"]->is_training());  // follows the (eval) source
  // The order of parameters is the module order: layers stay between embed_tokens and norm.
  const auto names = model->named_parameters().keys();
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_EQ(nlohmann::json::parse(model->config_json())["num_hidden_layers"], 4);
}

TEST(LayerReplication, LlamaForwardEqualsDuplicatedWeights) {
  for (const std::string type : {"llama", "mistral", "qwen2", "qwen3"}) {
    auto model = build(llama_config(type, 3));
    model->replicate_layers({{0, 2}, {1, 3}, {0, 1}});  // [0, 1, 1, 2, 0]
    EXPECT_EQ(model->num_hidden_layers(), 5) << type;
    auto ref = duplicated(*model);
    EXPECT_EQ(ref->num_hidden_layers(), 5) << type;
    const auto ids = random_ids(2, 7);
    EXPECT_EQ(compare(logits(*model, ids), logits(*ref, ids), kAtol, kAtol), "") << type;
  }
}

TEST(LayerReplication, Qwen2SlidingWindowsFollowTheirSources) {
  auto cfg = llama_config("qwen2", 2);
  cfg["use_sliding_window"] = true;
  cfg["sliding_window"] = 3;
  cfg["max_window_layers"] = 1;  // layer 0 full, layer 1 windowed
  auto model = build(cfg);
  model->replicate_layers({{0, 2}, {0, 2}});  // [full, window, full, window]
  const auto json = nlohmann::json::parse(model->config_json());
  EXPECT_EQ(json["layer_types"], nlohmann::json({"full_attention", "sliding_attention",
                                                 "full_attention", "sliding_attention"}));
  auto ref = duplicated(*model);      // rebuilt from the written layer_types
  const auto ids = random_ids(1, 8);  // longer than the window
  EXPECT_EQ(compare(logits(*model, ids), logits(*ref, ids), kAtol, kAtol), "");
  // Without layer_types the window would apply from layer 1 on (max_window_layers): different.
  cfg["num_hidden_layers"] = 4;
  auto suffix = peft::models::from_config(cfg.dump());
  suffix->eval();
  {
    torch::NoGradGuard no_grad;
    const auto src = params_of(*model);
    for (auto& item : suffix->named_parameters()) item.value().copy_(src.at(item.key()));
  }
  EXPECT_NE(compare(logits(*suffix, ids), logits(*model, ids), kAtol, kAtol), "");

  // An explicit layer_types (Qwen3) is reordered like the layers.
  auto q3 = llama_config("qwen3", 2);
  q3["sliding_window"] = 3;
  q3["layer_types"] = {"sliding_attention", "full_attention"};
  auto model3 = build(q3);
  model3->replicate_layers({{1, 2}, {0, 2}});
  EXPECT_EQ(nlohmann::json::parse(model3->config_json())["layer_types"],
            nlohmann::json({"full_attention", "sliding_attention", "full_attention"}));
  auto ref3 = duplicated(*model3);
  EXPECT_EQ(compare(logits(*model3, ids), logits(*ref3, ids), kAtol, kAtol), "");
}

TEST(LayerReplication, LlamaKvCacheAndGenerationMatchReference) {
  auto model = build(llama_config());
  model->replicate_layers({{0, 2}, {0, 2}});
  auto ref = duplicated(*model);
  const auto ids = random_ids(2, 6);
  KVCache cache;
  auto first = logits(*model, ids.narrow(1, 0, 4), &cache);
  EXPECT_EQ(cache.keys.size(), 4u);
  auto rest = logits(*model, ids.narrow(1, 4, 2), &cache);
  EXPECT_EQ(compare(at::cat({first, rest}, 1), logits(*ref, ids), kAtol, kAtol), "");
  peft::GenerationConfig g;
  g.max_new_tokens = 6;
  const std::vector<std::vector<int64_t>> prompts{{5, 6, 7}, {9, 10}};
  EXPECT_EQ(peft::generate(*model, prompts, g), peft::generate(*ref, prompts, g));
}

TEST(LayerReplication, GetPeftModelInjectsOneAdapterPerCopy) {
  auto model = build(llama_config());
  const auto base_params = params_of(*model);
  auto peft = peft::get_peft_model(model, lora_config(Ranges{{0, 1}, {0, 2}, {1, 2}}));
  EXPECT_EQ(model->num_hidden_layers(), 4);
  EXPECT_EQ(peft->targeted_module_names("default"),
            (std::vector<std::string>{
                "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj",
                "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.v_proj"}));
  // Distinct adapter tensors per copy, shared base weights.
  std::set<const void*> impls;
  int64_t adapter_numel = 0;
  for (auto& [name, layer] : peft::nn::lora_layers(*model)) {
    for (auto& [key, t] : layer->adapter_tensors("default")) {
      EXPECT_TRUE(impls.insert(t.unsafeGetTensorImpl()).second) << name << " " << key;
      adapter_numel += t.numel();
    }
  }
  EXPECT_EQ(impls.size(), 16u);  // 8 layers x (A, B)
  expect_shared(*model, base_params, "model.layers", {0, 0, 1, 1});
  // Shared base weights count once: "all params" grows only by the adapters.
  const auto [trainable, all] = peft->get_nb_trainable_parameters();
  EXPECT_EQ(trainable, adapter_numel);
  EXPECT_EQ(all, numel(base_params) + adapter_numel);
  // Adapter keys use the new indices.
  std::set<std::string> keys;
  for (const auto& [k, t] : peft->get_peft_model_state_dict("default")) keys.insert(k);
  EXPECT_TRUE(keys.count("base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"));
  EXPECT_EQ(keys.size(), 16u);

  // Same adapters on a model with duplicated weights: same logits; copies act independently.
  randomize_adapters(*peft, 3);
  auto ref = duplicated(*model);  // copies base and adapter values after injecting below
  auto ref_peft = peft::get_peft_model(ref, lora_config(std::nullopt));
  {
    torch::NoGradGuard no_grad;
    const auto src = params_of(*model);
    for (auto& item : ref->named_parameters()) item.value().copy_(src.at(item.key()));
  }
  const auto ids = random_ids(2, 5);
  const auto out = logits(*model, ids);
  EXPECT_EQ(compare(out, logits(*ref, ids), kAtol, kAtol), "");
  {
    torch::NoGradGuard no_grad;  // zeroing copy 1's adapter changes the output, not copy 0's
    auto layers = peft::nn::lora_layers(*model);
    for (auto& [name, layer] : layers) {
      if (name != "model.layers.1.self_attn.q_proj") continue;
      for (auto& [key, t] : layer->adapter_tensors("default")) t.zero_();
    }
    for (auto& [name, layer] : layers) {
      if (name != "model.layers.0.self_attn.q_proj") continue;
      for (auto& [key, t] : layer->adapter_tensors("default"))
        EXPECT_NE(t.abs().sum().item<double>(), 0.0);
    }
  }
  EXPECT_NE(compare(logits(*model, ids), out, kAtol, kAtol), "");

  // Save -> from_pretrained on a fresh 2-layer model replicates again and loads every copy.
  peft::test::TempDir dir;
  peft->save_pretrained(dir.str());
  auto fresh = build(llama_config());
  auto loaded = peft::PeftModel::from_pretrained(fresh, dir.str());
  EXPECT_EQ(fresh->num_hidden_layers(), 4);
  EXPECT_EQ(compare(logits(*fresh, ids), logits(*model, ids), kAtol, kAtol), "");
}

TEST(LayerReplication, GradientCheckpointingGivesTheSameGradients) {
  auto run = [](bool checkpointing) {
    auto model = build(llama_config());
    auto peft = peft::get_peft_model(model, lora_config(Ranges{{0, 2}, {0, 2}}, 0.1));
    randomize_adapters(*peft, 4);
    model->train();
    if (checkpointing) model->gradient_checkpointing_enable();
    const auto ids = random_ids(2, 6);
    torch::manual_seed(9);
    peft::train::causal_lm_loss(model->forward(ForwardInput{ids}), ids).backward();
    std::map<std::string, at::Tensor> grads;
    for (const auto& item : model->named_parameters()) {
      if (item.value().requires_grad()) grads[item.key()] = item.value().grad().clone();
    }
    return grads;
  };
  const auto plain = run(false), ckpt = run(true);
  ASSERT_EQ(plain.size(), 16u);
  for (const auto& [k, g] : plain) EXPECT_EQ(compare(ckpt.at(k), g, 1e-6, 1e-5), "") << k;
  // Copies of one source layer learn separately.
  EXPECT_NE(compare(plain.at("model.layers.0.self_attn.q_proj.lora_A.default.weight"),
                    plain.at("model.layers.2.self_attn.q_proj.lora_A.default.weight"), 1e-6),
            "");
}

TEST(LayerReplication, Gpt2RenumbersLayersAndMatchesReference) {
  auto model = build(gpt2_config());
  const auto before = params_of(*model);
  model->replicate_layers({{0, 3}, {1, 2}});  // [0, 1, 2, 1]
  EXPECT_EQ(model->num_hidden_layers(), 4);
  EXPECT_EQ(nlohmann::json::parse(model->config_json())["n_layer"], 4);
  expect_shared(*model, before, "transformer.h", {0, 1, 2, 1});
  // scale_attn_by_inverse_layer_idx reads the new index (PEFT renumbers layer_idx): the copy at
  // position 3 divides by 4 like the reference's layer 3.
  auto ref = duplicated(*model);
  const auto ids = random_ids(2, 6);
  EXPECT_EQ(compare(logits(*model, ids), logits(*ref, ids), kAtol, kAtol), "");
  KVCache cache;
  auto a = logits(*model, ids.narrow(1, 0, 3), &cache);
  auto b = logits(*model, ids.narrow(1, 3, 3), &cache);
  EXPECT_EQ(compare(at::cat({a, b}, 1), logits(*ref, ids), kAtol, kAtol), "");
  peft::GenerationConfig g;
  g.max_new_tokens = 5;
  EXPECT_EQ(peft::generate(*model, {{3, 4, 5}}, g), peft::generate(*ref, {{3, 4, 5}}, g));
  // LoRA per copy with PEFT's default target c_attn.
  peft::LoraConfig c;
  c.r = 2;
  c.fan_in_fan_out = true;  // GPT-2's Conv1D
  auto peft = peft::get_peft_model(model, c);
  EXPECT_EQ(peft->targeted_module_names("default").size(), 4u);
  EXPECT_EQ(peft->targeted_module_names("default").back(), "transformer.h.3.attn.c_attn");
}

TEST(LayerReplication, BertAndRobertaMatchReferenceAndCheckpoint) {
  for (const std::string type : {"bert", "roberta"}) {
    auto model = build(bert_config(type));
    const auto before = params_of(*model);
    model->replicate_layers({{1, 2}, {0, 2}});  // [1, 0, 1]
    EXPECT_EQ(model->num_hidden_layers(), 3) << type;
    EXPECT_EQ(nlohmann::json::parse(model->config_json())["num_hidden_layers"], 3) << type;
    expect_shared(*model, before, type + ".encoder.layer", {1, 0, 1});
    auto ref = duplicated(*model);
    const auto ids = random_ids(2, 6);
    EXPECT_EQ(compare(logits(*model, ids), logits(*ref, ids), kAtol, kAtol), "") << type;
    peft::LoraConfig c;
    c.r = 2;
    c.task_type = peft::TaskType::kSeqCls;
    auto peft = peft::get_peft_model(model, c);
    EXPECT_EQ(peft->targeted_module_names("default").size(), 6u) << type;
    randomize_adapters(*peft, 5);
    // Gradient checkpointing through the encoder's (replaced) layer list.
    auto grads = [&](bool on) {
      on ? model->gradient_checkpointing_enable() : model->gradient_checkpointing_disable();
      model->train();
      for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
      torch::manual_seed(11);
      model->forward(ForwardInput{ids}).pow(2).sum().backward();
      std::map<std::string, at::Tensor> out;
      for (const auto& item : model->named_parameters()) {
        if (item.value().grad().defined()) out[item.key()] = item.value().grad().clone();
      }
      return out;
    };
    const auto plain = grads(false), ckpt = grads(true);
    EXPECT_FALSE(plain.empty());
    for (const auto& [k, g] : plain) EXPECT_EQ(compare(ckpt.at(k), g, 1e-5, 1e-4), "") << k;
  }
}

TEST(LayerReplication, BadRangesThrowConfigErrorAndLeaveTheModel) {
  auto model = build(llama_config());
  const auto ids = random_ids(1, 4);
  const auto out = logits(*model, ids);
  for (const Ranges& bad :
       {Ranges{{0, 3}}, Ranges{{1, 1}}, Ranges{{-1, 1}}, Ranges{{2, 1}}, Ranges{{0, 2}, {2, 3}}}) {
    EXPECT_THROW(model->replicate_layers(bad), peft::ConfigError);
  }
  try {
    model->replicate_layers({{0, 1}, {0, 5}, {3, 4}});
    FAIL() << "no error";
  } catch (const peft::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("[0, 5], [3, 4]"), std::string::npos) << what;
    EXPECT_NE(what.find("model.layers (2 layers)"), std::string::npos) << what;
    EXPECT_NE(what.find("hint"), std::string::npos) << what;
  }
  EXPECT_EQ(model->num_hidden_layers(), 2);
  EXPECT_EQ(compare(logits(*model, ids), out, 0.0), "");
  // Through get_peft_model (validated again when injecting).
  EXPECT_THROW(peft::get_peft_model(model, lora_config(Ranges{{0, 9}})), peft::ConfigError);
  auto gpt2 = build(gpt2_config());
  EXPECT_THROW(gpt2->replicate_layers({{0, 4}}), peft::ConfigError);
  auto bert = build(bert_config("bert"));
  EXPECT_THROW(bert->replicate_layers({{2, 3}}), peft::ConfigError);
}

TEST(LayerReplication, RefusedOnceTheLayersHoldAdapters) {
  auto model = build(llama_config());
  auto peft = peft::get_peft_model(model, lora_config(std::nullopt));
  EXPECT_THROW(model->replicate_layers({{0, 2}, {0, 2}}), peft::UnsupportedError);
  EXPECT_EQ(model->num_hidden_layers(), 2);
}

TEST(LayerReplication, EmptyRangesChangeNothing) {
  auto model = build(llama_config());
  const auto before = params_of(*model);
  model->replicate_layers({});  // PEFT: layer_replication=[] is falsy
  EXPECT_EQ(model->num_hidden_layers(), 2);
  expect_shared(*model, before, "model.layers", {0, 1});
}

TEST(LayerReplication, DtypeMoveKeepsParametersShared) {
  auto model = build(llama_config());
  model->replicate_layers({{0, 2}, {0, 2}});
  auto ref = duplicated(*model);
  model->to(torch::kDouble);
  ref->to(torch::kDouble);
  const auto before = params_of(*model);
  for (const auto& [name, t] : before) EXPECT_EQ(t.scalar_type(), torch::kDouble) << name;
  // Still one tensor per source (the move converted each once) and the members follow.
  auto mods = model->named_modules();
  auto q0 =
      std::dynamic_pointer_cast<peft::nn::LoraLayerImpl>(mods["model.layers.0.self_attn.q_proj"]);
  auto q2 =
      std::dynamic_pointer_cast<peft::nn::LoraLayerImpl>(mods["model.layers.2.self_attn.q_proj"]);
  EXPECT_EQ(q0->weight().unsafeGetTensorImpl(), q2->weight().unsafeGetTensorImpl());
  EXPECT_EQ(q0->weight().scalar_type(), torch::kDouble);
  const auto ids = random_ids(1, 5);
  EXPECT_EQ(compare(logits(*model, ids), logits(*ref, ids), 1e-10), "");
}

TEST(LayerReplication, DrawsNoRandomNumbers) {
  auto model = build(llama_config());
  torch::manual_seed(42);
  model->replicate_layers({{0, 2}, {0, 2}});
  const auto after = torch::randn({8});
  torch::manual_seed(42);
  EXPECT_TRUE(torch::equal(after, torch::randn({8})));
}

}  // namespace
