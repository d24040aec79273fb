// Mixture-of-experts families (mixtral, qwen3_moe): the sparse block against a dense per-token
// reference, model forward and KV cache, per-expert -> fused checkpoint conversion, LoRA on the
// fused expert parameters through target_parameters (routed vs full delta, merge / unmerge, PEFT's
// checkpoint keys), and layer replication.
#include "../src/models/moe.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/safetensors.h"
#include "peft/lora/param.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::KVCache;
using peft::models::PretrainedModel;
using peft::models::detail::SparseMoeBlockImpl;
using peft::test::compare;

namespace {

constexpr int64_t kExperts = 4;

nlohmann::json mixtral_config() {
  return {{"model_type", "mixtral"},     {"vocab_size", 64},
          {"hidden_size", 16},           {"intermediate_size", 24},
          {"num_hidden_layers", 2},      {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"num_local_experts", kExperts},
          {"num_experts_per_tok", 2},    {"rms_norm_eps", 1e-5},
          {"rope_theta", 1e6},           {"sliding_window", nullptr},
          {"tie_word_embeddings", false}};
}

// Layer 0 sparse, layer 1 dense (mlp_only_layers).
nlohmann::json qwen3_moe_config(bool norm_topk_prob = false) {
  return {{"model_type", "qwen3_moe"},
          {"vocab_size", 64},
          {"hidden_size", 16},
          {"intermediate_size", 40},
          {"moe_intermediate_size", 12},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 8},
          {"num_experts", kExperts},
          {"num_experts_per_tok", 2},
          {"norm_topk_prob", norm_topk_prob},
          {"decoder_sparse_step", 1},
          {"mlp_only_layers", {1}},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", false}};
}

nlohmann::json config_for(const std::string& type) {
  return type == "mixtral" ? mixtral_config() : qwen3_moe_config();
}

std::shared_ptr<PretrainedModel> build(const nlohmann::json& config, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto model = peft::models::from_config(config.dump());
  model->eval();
  return model;
}

at::Tensor logits_of(PretrainedModel& model, const at::Tensor& ids, KVCache* cache = nullptr) {
  torch::NoGradGuard no_grad;
  return model.forward(ForwardInput{ids, {}, {}, cache});
}

at::Tensor random_ids(int64_t batch, int64_t seq, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::randint(64, {batch, seq}, torch::kLong);
}

std::shared_ptr<SparseMoeBlockImpl> block_of(PretrainedModel& model, int layer) {
  auto modules = model.named_modules();
  const std::string name = "model.layers." + std::to_string(layer) + ".mlp";
  auto* found = modules.find(name);
  return found ? std::dynamic_pointer_cast<SparseMoeBlockImpl>(*found) : nullptr;
}

std::map<std::string, at::Tensor> params_of(const torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value();
  return out;
}

// Every expert computed densely for every token, in double; then each token's top-k combined by
// hand.
at::Tensor dense_reference(const at::Tensor& x, const at::Tensor& router, const at::Tensor& gate_up,
                           const at::Tensor& down, int64_t k, bool renormalize) {
  const at::Tensor xd = x.to(torch::kDouble);
  const int64_t tokens = x.size(0), experts = gate_up.size(0), ff = gate_up.size(1) / 2;
  std::vector<at::Tensor> expert_out;  // (tokens, hidden) per expert
  for (int64_t e = 0; e < experts; ++e) {
    const at::Tensor w = gate_up[e].to(torch::kDouble);
    const at::Tensor g = xd.matmul(w.narrow(0, 0, ff).t());
    const at::Tensor u = xd.matmul(w.narrow(0, ff, ff).t());
    const at::Tensor h = g * torch::sigmoid(g) * u;
    expert_out.push_back(h.matmul(down[e].to(torch::kDouble).t()));
  }
  const at::Tensor probs = torch::softmax(xd.matmul(router.to(torch::kDouble).t()), -1);
  at::Tensor out = torch::zeros({tokens, x.size(1)}, torch::kDouble);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> p(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) p[static_cast<size_t>(e)] = probs[t][e].item<double>();
    std::vector<int64_t> order(static_cast<size_t>(experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)];
    });
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += p[static_cast<size_t>(order[static_cast<size_t>(j)])];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = order[static_cast<size_t>(j)];
      const double w = p[static_cast<size_t>(e)] / (renormalize ? sum : 1.0);
      out[t] += w * expert_out[static_cast<size_t>(e)][t];
    }
  }
  return out.to(x.scalar_type());
}

// The block's output on x against dense_reference with the given expert weights.
void expect_block_matches(SparseMoeBlockImpl& block, const at::Tensor& x, const at::Tensor& gate_up,
                          const at::Tensor& down, double atol = 1e-5) {
  torch::NoGradGuard no_grad;
  const auto& s = block.settings();
  const at::Tensor expected =
      dense_reference(x.reshape({-1, s.hidden_size}), block.gate->weight(), gate_up, down,
                      s.num_experts_per_tok, s.norm_topk_prob)
          .view(x.sizes());
  EXPECT_EQ(compare(block.forward(x), expected, atol), "");
}

void set_routed_lora(torch::nn::Module& model, bool routed) {
  for (const auto& item : model.named_modules()) {
    if (auto p = std::dynamic_pointer_cast<peft::nn::ParamModuleImpl>(item.value()))
      p->routed_lora = routed;
  }
}

// The per-expert layout of the Hub for `model`'s fused state (copies).
std::map<std::string, at::Tensor> per_expert_state(const PretrainedModel& model,
                                                   const std::string& type) {
  const bool mixtral = type == "mixtral";
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, value] : params_of(model)) {
    const auto pos = key.find(".mlp.experts.");
    const auto gate_pos = key.find(".mlp.gate.weight");
    const std::string block = mixtral ? ".block_sparse_moe." : ".mlp.";
    if (mixtral && gate_pos != std::string::npos) {
      out[key.substr(0, gate_pos) + block + "gate.weight"] = value.detach().clone();
      continue;
    }
    if (pos == std::string::npos) {
      out[key] = value.detach().clone();
      continue;
    }
    const std::string prefix = key.substr(0, pos) + block + "experts.";
    const std::string which = key.substr(pos + 13);
    for (int64_t e = 0; e < value.size(0); ++e) {
      const std::string base = prefix + std::to_string(e) + ".";
      if (which == "gate_up_proj") {
        const int64_t ff = value.size(1) / 2;
        out[base + (mixtral ? "w1" : "gate_proj") + ".weight"] =
            value[e].narrow(0, 0, ff).detach().clone();
        out[base + (mixtral ? "w3" : "up_proj") + ".weight"] =
            value[e].narrow(0, ff, ff).detach().clone();
      } else {
        out[base + (mixtral ? "w2" : "down_proj") + ".weight"] = value[e].detach().clone();
      }
    }
  }
  return out;
}

peft::LoraConfig expert_lora_config() {
  return peft::LoraConfig{
      .r = 4,
      .target_modules = peft::StrOrList(std::vector<std::string>{"q_proj"}),
      .lora_alpha = 8,
      .init_lora_weights = peft::InitLoraWeights{.kind = peft::InitLoraWeights::Kind::kFalse},
      .rank_pattern = {{"down_proj", 2}},
      .target_parameters =
          std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"},
  };
}

class MoeFamily : public ::testing::TestWithParam<std::string> {};

}  // namespace

// -------------------------------------------------------------------------------------------------
// The sparse block.

TEST(MoeBlock, MatchesDenseReferenceMixtral) {
  auto model = build(mixtral_config());
  auto block = block_of(*model, 0);
  ASSERT_TRUE(block);
  EXPECT_TRUE(block->settings().norm_topk_prob);
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({2, 5, 16});
  expect_block_matches(*block, x, block->experts->param("gate_up_proj"),
                       block->experts->param("down_proj"));
}

TEST(MoeBlock, MatchesDenseReferenceQwen3MoeWithAndWithoutNormTopkProb) {
  for (bool norm : {false, true}) {
    auto model = build(qwen3_moe_config(norm));
    auto block = block_of(*model, 0);
    ASSERT_TRUE(block);
    EXPECT_EQ(block->settings().norm_topk_prob, norm);
    torch::manual_seed(4);
    const at::Tensor x = torch::randn({9, 16});
    expect_block_matches(*block, x, block->experts->param("gate_up_proj"),
                         block->experts->param("down_proj"));
  }
}

TEST(MoeBlock, SingleTokenComputesOnlyItsExperts) {
  auto model = build(mixtral_config());
  auto block = block_of(*model, 1);
  ASSERT_TRUE(block);
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({1, 1, 16});
  expect_block_matches(*block, x, block->experts->param("gate_up_proj"),
                       block->experts->param("down_proj"));
}

// -------------------------------------------------------------------------------------------------
// Models.

TEST(MoeModel, ModuleTreeFollowsTransformers) {
  auto qwen = build(qwen3_moe_config());
  const auto p = params_of(*qwen);
  EXPECT_TRUE(p.count("model.layers.0.mlp.gate.weight"));
  EXPECT_EQ(p.at("model.layers.0.mlp.experts.gate_up_proj").sizes(),
            (std::vector<int64_t>{kExperts, 24, 16}));
  EXPECT_EQ(p.at("model.layers.0.mlp.experts.down_proj").sizes(),
            (std::vector<int64_t>{kExperts, 16, 12}));
  EXPECT_EQ(p.at("model.layers.1.mlp.gate_proj.weight").sizes(), (std::vector<int64_t>{40, 16}));
  EXPECT_TRUE(p.count("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_FALSE(p.count("model.layers.1.mlp.experts.gate_up_proj"));
  EXPECT_EQ(qwen->class_name(), "Qwen3MoeForCausalLM");
  EXPECT_EQ(qwen->parent_library(), "transformers.models.qwen3_moe.modeling_qwen3_moe");
  EXPECT_TRUE(qwen->default_target_modules().empty());  // not in PEFT's mapping

  auto mixtral = build(mixtral_config());
  const auto m = params_of(*mixtral);
  EXPECT_EQ(m.at("model.layers.1.mlp.experts.gate_up_proj").sizes(),
            (std::vector<int64_t>{kExperts, 48, 16}));
  EXPECT_EQ(m.at("model.layers.1.mlp.gate.weight").sizes(), (std::vector<int64_t>{kExperts, 16}));
  EXPECT_FALSE(m.count("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_EQ(mixtral->class_name(), "MixtralForCausalLM");
  EXPECT_EQ(mixtral->parent_library(), "transformers.models.mixtral.modeling_mixtral");
  EXPECT_EQ(mixtral->default_target_modules(), (std::vector<std::string>{"q_proj", "v_proj"}));

  // decoder_sparse_step 2: layer 0 dense, layer 1 sparse.
  auto cfg = qwen3_moe_config();
  cfg["decoder_sparse_step"] = 2;
  cfg["mlp_only_layers"] = nlohmann::json::array();
  auto stepped = build(cfg);
  EXPECT_FALSE(block_of(*stepped, 0));
  EXPECT_TRUE(block_of(*stepped, 1));
}

TEST(MoeModel, ConfigErrorsNameTheField) {
  auto cfg = mixtral_config();
  cfg["num_experts_per_tok"] = 5;
  EXPECT_THROW(peft::models::from_config(cfg.dump()), peft::ConfigError);
  auto q = qwen3_moe_config();
  q.erase("moe_intermediate_size");
  try {
    peft::models::from_config(q.dump());
    ADD_FAILURE() << "no error";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("moe_intermediate_size"), std::string::npos) << e.what();
  }
}

TEST_P(MoeFamily, LogitsShapeAndKvCacheDecodeMatchFullForward) {
  auto model = build(config_for(GetParam()));
  const at::Tensor ids = random_ids(2, 7);
  const at::Tensor full = logits_of(*model, ids);
  EXPECT_EQ(full.sizes(), (std::vector<int64_t>{2, 7, 64}));
  EXPECT_FALSE(full.isnan().any().item<bool>());
  KVCache cache;
  std::vector<at::Tensor> parts{logits_of(*model, ids.narrow(1, 0, 4), &cache)};
  for (int64_t t = 4; t < 7; ++t) parts.push_back(logits_of(*model, ids.narrow(1, t, 1), &cache));
  EXPECT_EQ(cache.length(), 7);
  EXPECT_EQ(compare(torch::cat(parts, 1), full, 1e-5), "");
  EXPECT_EQ(compare(parts.back().select(1, 0), full.select(1, 6), 1e-5), "");
}

// -------------------------------------------------------------------------------------------------
// Checkpoints.

TEST_P(MoeFamily, PerExpertCheckpointConvertsToFusedTensors) {
  const std::string type = GetParam();
  auto model = build(config_for(type));
  auto state = per_expert_state(*model, type);
  const std::string expert0 = type == "mixtral"
                                  ? "model.layers.0.block_sparse_moe.experts.0.w1.weight"
                                  : "model.layers.0.mlp.experts.0.gate_proj.weight";
  ASSERT_TRUE(state.count(expert0));
  model->convert_checkpoint(state);
  const auto params = params_of(*model);
  EXPECT_EQ(state.size(), params.size());
  for (const auto& [key, value] : params) {
    ASSERT_TRUE(state.count(key)) << key;
    EXPECT_TRUE(torch::equal(state.at(key), value)) << key;
  }
  // Fused checkpoints pass unchanged.
  auto fused = state;
  model->convert_checkpoint(fused);
  EXPECT_EQ(fused.size(), state.size());

  // Loaded into another model, it computes what the original computes.
  auto other = build(config_for(type), 7);
  const at::Tensor ids = random_ids(1, 6);
  EXPECT_NE(compare(logits_of(*other, ids), logits_of(*model, ids), 1e-3), "");
  peft::io::load_state_into(*other, state, "per-expert");
  EXPECT_EQ(compare(logits_of(*other, ids), logits_of(*model, ids), 0.0), "");
}

TEST_P(MoeFamily, LoadPretrainedReadsPerExpertFolder) {
  const std::string type = GetParam();
  auto model = build(config_for(type));
  peft::test::TempDir dir;
  peft::test::write_file(dir.str("config.json"), config_for(type).dump(2));
  peft::io::save_safetensors(dir.str("model.safetensors"), per_expert_state(*model, type));
  auto loaded = peft::models::load_pretrained(dir.str());
  const at::Tensor ids = random_ids(2, 5);
  EXPECT_EQ(compare(logits_of(*loaded, ids), logits_of(*model, ids), 0.0), "");
}

TEST_P(MoeFamily, MissingExpertIsFormatErrorNamingTheTensor) {
  const std::string type = GetParam();
  auto model = build(config_for(type));
  auto state = per_expert_state(*model, type);
  const std::string gone = type == "mixtral" ? "model.layers.1.block_sparse_moe.experts.2.w3.weight"
                                             : "model.layers.0.mlp.experts.3.up_proj.weight";
  ASSERT_EQ(state.erase(gone), 1u);
  try {
    model->convert_checkpoint(state);
    ADD_FAILURE() << "no error";
  } catch (const peft::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(gone), std::string::npos) << e.what();
  }
}

// -------------------------------------------------------------------------------------------------
// LoRA on the fused expert parameters (target_parameters).

TEST_P(MoeFamily, TargetParametersLoraRoutedEqualsFullDeltaMergesAndSaves) {
  const std::string type = GetParam();
  auto model = build(config_for(type));
  const at::Tensor ids = random_ids(2, 6);
  const at::Tensor base = logits_of(*model, ids);
  const auto base_params = params_of(*model);
  std::map<std::string, at::Tensor> saved;
  for (const auto& [k, v] : base_params) saved[k] = v.detach().clone();

  torch::manual_seed(11);
  auto pm = peft::get_peft_model(model, expert_lora_config());
  auto block = block_of(*model, 0);
  ASSERT_TRUE(block);
  auto gate_up_lora = block->experts->param_lora("gate_up_proj");
  auto down_lora = block->experts->param_lora("down_proj");
  ASSERT_TRUE(gate_up_lora && down_lora);
  ASSERT_TRUE(gate_up_lora->has_active_lora() && down_lora->has_active_lora());
  EXPECT_EQ(gate_up_lora->expert_factors(0).at(0).A.sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(down_lora->expert_factors(0).at(0).A.size(0), 2);  // rank_pattern

  const at::Tensor lora = logits_of(*model, ids);
  EXPECT_NE(compare(lora, base, 1e-3), "") << "the adapter changes nothing";

  // The block with routed LoRA = the dense reference on P + PEFT's delta.
  torch::manual_seed(12);
  const at::Tensor x = torch::randn({7, 16});
  at::Tensor gu_eff, dn_eff;
  {
    torch::NoGradGuard no_grad;
    // param() is P + the LoRA delta (what PEFT's parametrization hands to forward); the slot's
    // weight is P.
    gu_eff = gate_up_lora->weight() + gate_up_lora->get_delta_weight("default");
    dn_eff = down_lora->weight() + down_lora->get_delta_weight("default");
    EXPECT_EQ(compare(block->experts->param("gate_up_proj"), gu_eff, 1e-6), "");
  }
  expect_block_matches(*block, x, gu_eff, dn_eff);
  {
    torch::NoGradGuard no_grad;
    EXPECT_NE(compare(block->forward(x),
                      dense_reference(x, block->gate->weight(), gate_up_lora->weight(),
                                      down_lora->weight(), 2, block->settings().norm_topk_prob),
                      1e-4),
              "")
        << "the experts' LoRA changes nothing";
  }

  set_routed_lora(*model, false);
  EXPECT_EQ(compare(logits_of(*model, ids), lora, 1e-5), "");
  set_routed_lora(*model, true);

  pm->merge_adapter();
  EXPECT_FALSE(torch::equal(block->experts->named_parameters(false)["gate_up_proj"],
                            saved.at("model.layers.0.mlp.experts.gate_up_proj")));
  EXPECT_EQ(compare(logits_of(*model, ids), lora, 1e-4), "");
  pm->unmerge_adapter();
  for (const auto& [k, v] : params_of(*model)) {
    if (!saved.count(k)) continue;  // adapter tensors
    EXPECT_EQ(compare(v, saved.at(k), 1e-5), "") << k;
  }
  EXPECT_EQ(compare(logits_of(*model, ids), lora, 1e-5), "");

  peft::test::TempDir dir;
  pm->save_pretrained(dir.str());
  const auto file = peft::io::load_safetensors(dir.str("adapter_model.safetensors"));
  std::string keys;
  for (const auto& [k, v] : file) keys += k + " " + c10::str(v.sizes()) + "\n";
  const std::string experts = "base_model.model.model.layers.0.mlp.experts.";
  ASSERT_TRUE(file.count(experts + "base_layer.lora_A.weight")) << keys;  // gate_up_proj: innermost
  ASSERT_TRUE(file.count(experts + "lora_A.weight")) << keys;             // down_proj
  const int64_t ff = gate_up_lora->weight().size(1) / 2;
  EXPECT_EQ(file.at(experts + "base_layer.lora_A.weight").sizes(),
            (std::vector<int64_t>{4 * kExperts, 16}));
  EXPECT_EQ(file.at(experts + "base_layer.lora_B.weight").sizes(),
            (std::vector<int64_t>{2 * ff, 4 * kExperts}));
  EXPECT_EQ(file.at(experts + "lora_A.weight").sizes(), (std::vector<int64_t>{2 * kExperts, ff}));
  EXPECT_EQ(file.at(experts + "lora_B.weight").sizes(), (std::vector<int64_t>{16, 2 * kExperts}));
  EXPECT_TRUE(file.count("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")) << keys;
  for (const auto& [k, v] : file) EXPECT_EQ(k.find("lora_param_"), std::string::npos) << k;

  // Loading the saved adapter onto a fresh copy of the base reproduces the logits.
  auto fresh = build(config_for(type), 99);
  {
    torch::NoGradGuard no_grad;
    for (auto& item : fresh->named_parameters()) item.value().copy_(saved.at(item.key()));
  }
  auto loaded = peft::PeftModel::from_pretrained(fresh, dir.str());
  EXPECT_EQ(compare(logits_of(*fresh, ids), lora, 1e-5), "");
}

TEST(MoeLora, Bfloat16ModelWithExpertLoraRuns) {
  auto model = build(mixtral_config());
  model->to(torch::kBFloat16);
  const at::Tensor ids = random_ids(1, 5);
  auto pm = peft::get_peft_model(model, expert_lora_config());
  const at::Tensor routed = logits_of(*model, ids);
  EXPECT_EQ(routed.scalar_type(), torch::kBFloat16);
  EXPECT_FALSE(routed.isnan().any().item<bool>());
  set_routed_lora(*model, false);
  EXPECT_EQ(compare(logits_of(*model, ids).to(torch::kFloat), routed.to(torch::kFloat), 0.1, 0.05),
            "");
}

TEST(MoeLora, GradientsReachExpertFactorsAndAgreeBetweenRoutedAndFullDelta) {
  auto model = build(qwen3_moe_config());
  torch::manual_seed(13);
  auto pm = peft::get_peft_model(model, expert_lora_config());
  auto slot = block_of(*model, 0)->experts->param_lora("down_proj");
  ASSERT_TRUE(slot);
  at::Tensor A = slot->adapter_tensor("default", "lora_A.weight");
  ASSERT_TRUE(A.defined() && A.requires_grad());
  const at::Tensor ids = random_ids(2, 5);
  std::vector<at::Tensor> grads;
  for (bool routed : {true, false}) {
    set_routed_lora(*model, routed);
    if (A.grad().defined()) A.mutable_grad().zero_();
    model->forward(ForwardInput{ids, {}, {}, nullptr}).pow(2).mean().backward();
    ASSERT_TRUE(A.grad().defined());
    grads.push_back(A.grad().clone());
  }
  EXPECT_GT(grads[0].abs().max().item<double>(), 0.0);
  EXPECT_EQ(compare(grads[0], grads[1], 1e-6, 1e-4), "");
  for (const auto& p : model->parameters()) {
    if (!p.requires_grad()) continue;
    EXPECT_TRUE(p.grad().defined());
  }
}

// -------------------------------------------------------------------------------------------------
// Layer replication.

TEST_P(MoeFamily, LayerReplicationSharesExpertsAndMatchesDuplicatedWeights) {
  const std::string type = GetParam();
  auto model = build(config_for(type));
  const auto before = params_of(*model);
  model->replicate_layers({{0, 2}, {0, 1}});  // layers 0, 1, 0
  const auto after = params_of(*model);
  EXPECT_EQ(after.at("model.layers.2.mlp.experts.gate_up_proj").unsafeGetTensorImpl(),
            before.at("model.layers.0.mlp.experts.gate_up_proj").unsafeGetTensorImpl());
  EXPECT_EQ(after.at("model.layers.2.mlp.gate.weight").unsafeGetTensorImpl(),
            before.at("model.layers.0.mlp.gate.weight").unsafeGetTensorImpl());
  const auto config = nlohmann::json::parse(model->config_json());
  EXPECT_EQ(config.at("num_hidden_layers"), 3);
  if (type == "qwen3_moe") {  // layers 0 (sparse), 1 (dense), 0 (sparse)
    EXPECT_EQ(config.at("mlp_only_layers"), nlohmann::json::array({1}));
    EXPECT_EQ(config.at("decoder_sparse_step"), 1);
    EXPECT_TRUE(block_of(*model, 2));
    EXPECT_FALSE(block_of(*model, 1));
  }
  // A model built from the updated config.json with copies of the weights computes the same logits.
  auto ref = peft::models::from_config(model->config_json());
  ref->eval();
  {
    torch::NoGradGuard no_grad;
    for (auto& item : ref->named_parameters()) item.value().copy_(after.at(item.key()));
  }
  const at::Tensor ids = random_ids(1, 6);
  EXPECT_EQ(compare(logits_of(*model, ids), logits_of(*ref, ids), 1e-6), "");
}

INSTANTIATE_TEST_SUITE_P(Types, MoeFamily, ::testing::Values("mixtral", "qwen3_moe"));
