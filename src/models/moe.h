// Mixture-of-experts blocks of the model zoo (private to it): fused 3-D expert weights that PEFT's
// target_parameters can adapt, the top-k router, and the Mixtral / Qwen3-MoE config and checkpoint
// conventions. Counterparts (transformers v5 layout): MixtralExperts / MixtralTopKRouter /
// MixtralSparseMoeBlock (models/mixtral/modeling_mixtral.py), Qwen3MoeExperts / Qwen3MoeTopKRouter
// / Qwen3MoeSparseMoeBlock (models/qwen3_moe/modeling_qwen3_moe.py), conversion_mapping.py.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "config_reader.h"
#include "llama_family.h"
#include "peft/lora/linear.h"
#include "peft/lora/param.h"

namespace peft::models::detail {

// What a sparse block needs, read from config.json.
struct MoeSettings {
  int64_t hidden_size = 0;
  int64_t num_experts = 0;          // mixtral: num_local_experts; qwen3_moe: num_experts
  int64_t num_experts_per_tok = 0;  // top-k
  // Expert ff. mixtral: intermediate_size; qwen3_moe: moe_intermediate_size.
  int64_t expert_intermediate_size = 0;
  bool norm_topk_prob = true;  // mixtral: always; qwen3_moe: config.norm_topk_prob (default false)
  // transformers v5: Qwen3MoeTopKRouter casts the top-k weights to the logits' dtype;
  // MixtralTopKRouter keeps them float32, so each expert's output is weighted in float32 and cast
  // back when accumulated.
  bool cast_router_weights = false;
  double router_jitter_noise = 0.0;  // mixtral: multiplicative input noise in training mode only
};

// Sparse-block settings for a MoE model_type (mixtral, qwen3_moe), nullopt for a dense one. Reads
// and checks the fields named above (ConfigError naming the field).
std::optional<MoeSettings> read_moe_settings(const ConfigReader& config, LlamaFamily family,
                                             int64_t hidden_size);

// Per layer: true when the layer's mlp is a sparse block. Mixtral: every layer. Qwen3-MoE: layer i
// unless i is in mlp_only_layers or (i + 1) % decoder_sparse_step != 0 (Qwen3MoeDecoderLayer).
// Dense types: none.
std::vector<bool> read_sparse_layers(const ConfigReader& config, LlamaFamily family,
                                     int64_t num_layers);

// After layer replication (sparse: the new per-layer pattern): Qwen3-MoE's decoder_sparse_step /
// mlp_only_layers written into `patch` so that config.json describes the new order (step 1, the
// dense positions listed) when some layer is dense. Divergence from PEFT, which only sets
// num_hidden_layers.
void patch_sparse_layers(LlamaFamily family, const std::vector<bool>& sparse,
                         nlohmann::json& patch);

// The experts of one block as two fused parameters (registered in this order):
//   gate_up_proj: (E, 2 ff, hidden), rows [0, ff) the gate, [ff, 2 ff) the up projection;
//   down_proj:    (E, hidden, ff).
// Expert e computes down_proj[e] (silu(gate) * up) with gate, up = linear(x,
// gate_up_proj[e]).chunk(2).
class ExpertsImpl : public peft::nn::ParamModuleImpl {
 public:
  ExpertsImpl(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size);
  // x: (T, hidden); top_k_index: (T, k) int64; top_k_weights: (T, k). Returns (T, hidden) in x's
  // dtype: sum over the k chosen experts of weight * expert(x). Only the experts some token chose
  // are computed.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& top_k_index,
                     const at::Tensor& top_k_weights) const;
  int64_t num_experts() const { return experts_; }

 private:
  int64_t experts_, hidden_, ff_;
};
TORCH_MODULE(Experts);

// The layer's `mlp` of a sparse layer: router `gate` (Linear hidden -> E, no bias) and `experts`.
class SparseMoeBlockImpl : public torch::nn::Module {
 public:
  explicit SparseMoeBlockImpl(const MoeSettings& settings);
  // x: (..., hidden) -> same shape.
  at::Tensor forward(const at::Tensor& x);
  // The router on x (T, hidden): (top_k_index (T, k) int64, top_k_weights (T, k)). Softmax in
  // float32 over all experts, top-k, renormalised when norm_topk_prob, cast to x's dtype when
  // cast_router_weights.
  std::pair<at::Tensor, at::Tensor> route(const at::Tensor& x) const;
  const MoeSettings& settings() const { return s_; }

  peft::nn::Linear gate{nullptr};
  Experts experts{nullptr};

 private:
  MoeSettings s_;
};
TORCH_MODULE(SparseMoeBlock);

// Rewrites the per-expert layouts found on the Hub into the fused parameters, in place:
//   mixtral:   model.layers.N.block_sparse_moe.{gate.weight, experts.E.w1/w3/w2.weight} (w1 gate,
//   w3 up, w2 down) qwen3_moe: model.layers.N.mlp.experts.E.{gate_proj, up_proj, down_proj}.weight
// into model.layers.N.mlp.gate.weight and model.layers.N.mlp.experts.{gate_up_proj, down_proj}
// (gate_up_proj[e] = cat(gate_e, up_e), stacked over experts: transformers' MergeModulelist(dim=0)
// + Concatenate(dim=1)). Fused checkpoints pass unchanged. `sparse` marks the sparse layers. Every
// missing expert tensor is listed in one FormatError; per-expert shapes that disagree give
// ShapeMismatchError.
void convert_moe_checkpoint(std::map<std::string, at::Tensor>& tensors, LlamaFamily family,
                            const std::vector<bool>& sparse, int64_t num_experts);

}  // namespace peft::models::detail
