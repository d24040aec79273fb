// reduce_intruder_dimension (PEFT tuners/lora/intruders.py): detect the singular directions of W +
// dW that are nearly orthogonal to every left singular vector of W ("intruders"), shrink them to
// lambda x S, and store the rank-r factorisation of what remains of the update as a new adapter.
#include "peft/intruders.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <iostream>

#include "../strings.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

bool is_conv(nn::LayerKind kind) {
  return kind == nn::LayerKind::kConv1d || kind == nn::LayerKind::kConv2d ||
         kind == nn::LayerKind::kConv3d;
}

// The mitigated update of one layer, (W_mit - W) / scaling, or an undefined tensor when the layer
// has no intruders. W and dW are 2-D, in the layout of the stored base weight (Conv kernels
// flattened).
at::Tensor mitigated_update(const at::Tensor& W, const at::Tensor& dW, double scaling,
                            const IntruderOptions& o, const std::string& log_name) {
  const at::Tensor W_merged = W + dW;
  // Divergence from PEFT: PEFT runs torch.linalg.svd on the 4-D weight of a Conv layer (a batch of
  // per-kernel-position matrices, whose cosines make no sense and whose transposes fail); here a
  // Conv weight is the matrix (out, in * kernel), as add_weighted_adapter's SVD types treat it.
  const at::Tensor U_base = std::get<0>(at::linalg_svd(W, /*full_matrices=*/false));
  auto [U_merged, S_merged, Vh_merged] = at::linalg_svd(W_merged, /*full_matrices=*/false);
  // cos_i = max_j |u_merged_i . u_base_j|, for the top_k directions of W + dW.
  const at::Tensor cos_sim = std::get<0>(at::matmul(U_merged.t(), U_base).abs().max(1));
  const int64_t k = std::min<int64_t>(o.top_k, cos_sim.size(0));
  const at::Tensor intruders = at::nonzero(cos_sim.narrow(0, 0, k) < o.threshold_epsilon).flatten();
  if (intruders.numel() == 0) {
    if (o.logging_sink) o.logging_sink(log_name + ": No intruders");
    return {};
  }
  if (o.logging_sink) {
    o.logging_sink(log_name + ": Intruders: " + std::to_string(intruders.numel()));
  }
  // The intruder components S_i u_i v_i^T of W + dW (the paper works on the merged weight, and so
  // does PEFT).
  const at::Tensor intruder_part =
      at::matmul(U_merged.index_select(1, intruders) * S_merged.index_select(0, intruders),
                 Vh_merged.index_select(0, intruders));
  const at::Tensor W_mitigated = W_merged + (o.mitigation_lambda - 1.0) * intruder_part;
  // PEFT divides out the old adapter's scaling: the new adapter (same config) applies it again.
  return (W_mitigated - W) / scaling;
}

// Writes the rank-r factorisation B A = M (B = U sqrt(S), A = sqrt(S) V^T, the singular values
// shared equally as in PEFT) into the adapter's factors. M: (rows of B, columns of A).
void write_factors(const at::Tensor& M, at::Tensor& A, at::Tensor& B, int64_t r,
                   const std::string& layer_name) {
  auto [U, S, Vh] = at::linalg_svd(M, /*full_matrices=*/false);
  // Divergence from PEFT: when r exceeds min(out, in), PEFT assigns factors of the smaller rank
  // (the parameters change shape); here the missing columns / rows are zero, which leaves B A
  // unchanged.
  const int64_t k = std::min<int64_t>(r, S.size(0));
  const at::Tensor sqrt_s = S.narrow(0, 0, k).sqrt();
  at::Tensor B_new = at::zeros({M.size(0), r}, M.options());
  at::Tensor A_new = at::zeros({r, M.size(1)}, M.options());
  B_new.narrow(1, 0, k).copy_(U.narrow(1, 0, k) * sqrt_s);
  A_new.narrow(0, 0, k).copy_(sqrt_s.unsqueeze(1) * Vh.narrow(0, 0, k));
  PEFT_CHECK(B_new.numel() == B.numel() && A_new.numel() == A.numel(), ShapeMismatchError,
             "reduce_intruder_dimension",
             "layer \"" << layer_name << "\": the factorisation gives " << B_new.sizes() << " and "
                        << A_new.sizes() << " but the new adapter's factors are " << B.sizes()
                        << " and " << A.sizes());
  // The original dtype: the factors are computed in float32 for half-precision weights.
  B.copy_(B_new.reshape(B.sizes()).to(B.scalar_type()));
  A.copy_(A_new.reshape(A.sizes()).to(A.scalar_type()));
}

}  // namespace

void print_to_stdout(const std::string& message) { std::cout << message << std::endl; }

void reduce_intruder_dimension(PeftModel& model, const IntruderOptions& o) {
  const auto& names = model.adapter_names();
  PEFT_CHECK(std::find(names.begin(), names.end(), o.old_adapter_name) != names.end(),
             AdapterNotFoundError, "reduce_intruder_dimension",
             "Adapter " << o.old_adapter_name << " does not exist (adapters: ["
                        << detail::join(names) << "])");
  // Divergence from PEFT: Python slices cos_sim[:top_k], so a negative top_k drops the last |top_k|
  // directions.
  PEFT_CHECK(o.top_k >= 0, ConfigError, "reduce_intruder_dimension",
             "top_k must be >= 0; got " << o.top_k);
  const LoraConfig& old_config = model.peft_config(o.old_adapter_name);
  PEFT_CHECK(old_config.peft_type == "LORA", ConfigError, "reduce_intruder_dimension",
             "The provided model is not using LoRA and is therefore not supported.");
  // Divergence from PEFT: BD-LoRA's packed factors are not the dense A / B the reduction rewrites.
  PEFT_CHECK(!old_config.use_bdlora, UnsupportedError, "reduce_intruder_dimension",
             "adapter \"" << o.old_adapter_name
                          << "\" uses use_bdlora (block-diagonal factors stored packed), which the "
                             "intruder reduction does not support");
  // PEFT adds the new adapter with the old one's config. Divergence from PEFT:
  // PeftModel.add_adapter does not check the name there (an existing adapter's slots are re-created
  // and then overwritten); peft.cpp's add_adapter refuses an existing name with ConfigError "...
  // already exists".
  model.add_adapter(o.new_adapter_name, old_config);

  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : nn::lora_layers(model.base_model())) {
    // Divergence from PEFT: PEFT visits every LoRA layer and fails (KeyError) on one that lacks the
    // old adapter; here such layers are skipped. An lm_head whose LoRA is tied to the input
    // embedding's has nothing of its own (the embedding's new adapter is what it uses).
    if (!layer->has_adapter(o.old_adapter_name) || !layer->has_adapter(o.new_adapter_name) ||
        layer->adapter_tensors(o.old_adapter_name).empty()) {
      continue;
    }
    // PEFT logs the names of peft_model.named_modules().
    const std::string log_name = "base_model.model." + name;
    const nn::LayerKind kind = layer->kind();
    const bool emb = kind == nn::LayerKind::kEmbedding;
    const std::string a_key = emb ? "lora_embedding_A" : "lora_A.weight";
    const std::string b_key = emb ? "lora_embedding_B" : "lora_B.weight";
    at::Tensor A_new = layer->adapter_tensor(o.new_adapter_name, a_key);
    at::Tensor B_new = layer->adapter_tensor(o.new_adapter_name, b_key);

    // Divergence from PEFT: PEFT upcasts only W for its SVD and runs the SVD of W + dW in half
    // precision (which LibTorch does not implement); here W and dW are both upcast to float32.
    const at::ScalarType stored = layer->float_weight().scalar_type();
    const at::ScalarType compute =
        stored == at::kHalf || stored == at::kBFloat16 ? at::kFloat : stored;
    at::Tensor W = layer->float_weight().detach().to(compute);
    at::Tensor dW = layer->get_delta_weight(o.old_adapter_name).to(compute);
    if (is_conv(kind)) {
      W = W.flatten(1);
      dW = dW.flatten(1);
    }
    // Detection runs on the stored layout, as in PEFT (for GPT-2's Conv1D, W is (in, out)).
    at::Tensor M = mitigated_update(W, dW, layer->scaling(o.old_adapter_name), o, log_name);
    if (!M.defined()) {
      // No intruders: the old factors unchanged. PEFT quirk kept: only A and B are copied (not
      // lora_B.bias nor a DoRA magnitude, which keep the new adapter's initial values).
      A_new.copy_(layer->adapter_tensor(o.old_adapter_name, a_key));
      B_new.copy_(layer->adapter_tensor(o.old_adapter_name, b_key));
      continue;
    }
    // Divergence from PEFT: PEFT factorises the update in the stored layout, which gives B and A of
    // the wrong shapes for GPT-2's Conv1D and Embedding (both store the transpose of B A); they are
    // transposed here first.
    if (kind == nn::LayerKind::kConv1D || emb) M = M.t();
    write_factors(M, A_new, B_new, layer->adapter_settings(o.old_adapter_name).r, name);
  }
  if (o.logging_sink) o.logging_sink("Enabling new adapter " + o.new_adapter_name);
  model.set_adapter(o.new_adapter_name);
}

}  // namespace peft
