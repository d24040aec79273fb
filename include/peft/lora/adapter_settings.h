// What one adapter of one layer is: rank, alpha and scaling, dropout, init and the variant
// switches, resolved from a LoraConfig for that layer (rank_pattern / alpha_pattern applied). PEFT
// counterpart: the arguments of LoraLayer.update_layer.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/config.h"

namespace peft::nn {

// kParam: the LoRA of a raw parameter (target_parameters, include/peft/lora/param.h).
enum class LayerKind { kLinear, kConv1D, kEmbedding, kConv1d, kConv2d, kConv3d, kParam };
std::string to_string(LayerKind kind);

struct AdapterSettings {
  int r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  double lora_dropout = 0.0;
  bool lora_bias = false;
  InitLoraWeights init_lora_weights;
  // ---- variant switches (src/lora/variants/registry.cpp chooses the variant from them) ----
  bool use_dora = false;
  // aLoRA: the adapter acts on the invocation sequence's last occurrence and every position after
  // it.
  std::optional<std::vector<int64_t>> alora_invocation_tokens;
  // Arrow: the adapter is a router over the layer's task adapters.
  std::optional<ArrowConfig> arrow_config;
  // MonteCLoRA's sampler settings.
  std::optional<MontecloraConfig> monteclora_config;
  // VeLoRA's groups, scale and projection init.
  std::optional<VeloraConfig> velora_config;
  // QALoRA (GPTQ layers only): lora_A sees the input average-pooled over groups of this many
  // features.
  bool use_qalora = false;
  int64_t qalora_group_size = 16;
  // BD-LoRA: which factor is block-diagonal is decided by matching target_name against its lists.
  std::optional<BdLoraConfig> use_bdlora;
  // The targeted module's full name (PEFT's current_key, e.g. "model.layers.0.self_attn.q_proj"),
  // for variants that choose by name (BD-LoRA); empty for hand-built layers.
  std::string target_name;
  // LoRA-GA's direction / scale choices (init_lora_weights = "lora_ga").
  std::optional<LoraGAConfig> lora_ga_config;
  // LoftQ's bits / iterations (init_lora_weights = "loftq").
  std::optional<LoftQConfig> loftq_config;
  // The adapter's whole config when it came from one (PeftModel sets it), so that a variant can
  // read its own sub-config (PEFT hands `config` to resolve_lora_variant and LoraVariant.init);
  // null for hand-built settings.
  std::shared_ptr<const LoraConfig> config;
  // alpha / r, or alpha / sqrt(r) with rsLoRA.
  double base_scaling() const;
};

// The rows of a batch that one adapter serves in a mixed batch (PEFT's forward(...,
// adapter_names=[...])).
struct AdapterRows {
  std::string adapter;
  std::vector<int64_t> rows;  // ascending batch indices
};

}  // namespace peft::nn
