// DoRA (weight-decomposed LoRA) on Linear, GPT-2 Conv1D, Embedding and ConvNd layers. PEFT
// counterparts: DoraLinearVariant, DoraEmbeddingVariant, _DoraConvNdVariant (variants.py) and
// DoraLinearLayer / DoraEmbeddingLayer / DoraConvNdLayer (dora.py). The magnitude m is the
// adapter's parameter "lora_magnitude_vector.<adapter>.weight": (out,) for Linear / Conv1D,
// (embedding_dim,) for Embedding, (1, out, 1...) for ConvNd.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

constexpr const char* kMagnitudeKey = "lora_magnitude_vector";

// ||W + dW|| per output channel (detached), shaped like the magnitude; `delta` scaled and in the
// weight's layout.
at::Tensor weight_norm(LayerKind kind, const at::Tensor& weight, const at::Tensor& delta) {
  const at::Tensor w = weight.detach() + delta.detach();
  switch (kind) {
    case LayerKind::kLinear:
      return at::linalg_vector_norm(w, 2, {1}).to(weight.scalar_type());
    case LayerKind::kConv1D:  // stored (in, out): norms of the (out, in) rows
      return at::linalg_vector_norm(w, 2, {0}).to(weight.scalar_type());
    case LayerKind::kEmbedding:  // PEFT runs the Linear norm on W^T (dim, vocab): one norm per
                                 // embedding column
      return at::linalg_vector_norm(w, 2, {0}).to(weight.scalar_type());
    default: {
      std::vector<int64_t> dims;
      for (int64_t d = 1; d < w.dim(); ++d) dims.push_back(d);
      // (out, 1, 1...) -> (1, out, 1...): PEFT's DoraConv*Layer layout
      return at::linalg_vector_norm(w, 2, dims, /*keepdim=*/true)
          .transpose(0, 1)
          .to(weight.scalar_type());
    }
  }
}

// m / ||W + dW|| shaped to scale the stored weight: (out, 1) Linear, (1, out) Conv1D, (1, dim)
// Embedding, (out, 1, 1...) ConvNd.
at::Tensor factor_for_weight(LayerKind kind, const at::Tensor& factor, int64_t weight_dim) {
  switch (kind) {
    case LayerKind::kLinear:
      return factor.reshape({-1, 1});
    case LayerKind::kConv1D:
      return factor.reshape({1, -1});
    case LayerKind::kEmbedding:
      return factor.reshape({1, -1});
    default: {
      std::vector<int64_t> shape(static_cast<size_t>(weight_dim), 1);
      shape[0] = -1;
      return factor.reshape(shape);
    }
  }
}

class DoraVariant final : public LoraVariant {
 public:
  const char* name() const override { return "DoRA"; }

  void init(LoraLayerImpl& layer, const std::string& adapter) override {
    // PEFT DoraLinearLayer.update_layer: m = ||W + scaling * B A|| per output channel, so DoRA is a
    // no-op at init when B A = 0 (computed in float32 for half-precision factors, as
    // get_delta_weight does on CPU).
    torch::NoGradGuard no_grad;
    const at::Tensor W = layer.float_weight();
    const at::Tensor m =
        weight_norm(layer.kind(), W, get_delta_weight(layer, adapter).to(W.scalar_type()));
    layer.adapter_dict(kMagnitudeKey)
        .insert(adapter, std::make_shared<FactorImpl>(m, at::Tensor()));
  }

  void remove(LoraLayerImpl& layer, const std::string& adapter) override {
    layer.adapter_dict(kMagnitudeKey).erase(adapter);
  }

  void append_tensors(const LoraLayerImpl& layer, const std::string& adapter,
                      std::vector<std::pair<std::string, at::Tensor>>& out) const override {
    out.emplace_back(kMagnitudeKey, magnitude(layer, adapter));
  }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    const at::Tensor m = magnitude(layer, adapter);
    const at::Tensor W = layer.float_weight();
    const at::Tensor norm =
        weight_norm(layer.kind(), W, get_delta_weight(layer, adapter).to(W.scalar_type()));
    const at::Tensor g = m / norm.to(m.scalar_type());  // the norm is detached (paper, section 4.3)
    if (layer.kind() == LayerKind::kEmbedding) {
      // DoraEmbeddingVariant: result = g * result + g * s (A^T[x] B^T), g per embedding column.
      return g * result + g * layer.lora_forward(x, adapter);
    }
    // DoraLinearVariant / _DoraConvNdVariant: result += (g - 1) * base + g * s B A x, where base is
    // the bias-free base output: reused from result without dropout or in eval mode, recomputed on
    // the dropped-out input otherwise.
    const double p = layer.adapter_settings(adapter).lora_dropout;
    const at::Tensor xd = layer.lora_dropout(x, adapter);
    at::Tensor base;
    if (p == 0.0 || !layer.is_training()) {
      base =
          layer.has_bias() ? result - channel_shaped(layer.bias(), result, layer.kind()) : result;
    } else {
      base = layer.base_forward(xd, W.to(xd.scalar_type()), at::Tensor());
    }
    const at::Tensor lora = layer.lora_forward(xd, adapter);
    PEFT_CHECK(lora.sizes() == result.sizes(), ShapeMismatchError, "lora",
               "DoRA output shape "
                   << lora.sizes() << " differs from the base output " << result.sizes()
                   << " (hint: PEFT does not support dilated base convolutions either)");
    return result + (g - 1) * base + g * lora;
  }

  at::Tensor merge_safe(LoraLayerImpl& layer, const std::string& adapter,
                        const at::Tensor& weight) override {
    // W' = (m / ||W + dW||) (W + dW); the norm is cached for an exact unmerge (PEFT
    // "{adapter}-weight_norm").
    const at::Tensor delta = get_delta_weight(layer, adapter).to(weight.scalar_type());
    merge_norm_ = weight_norm(layer.kind(), weight, delta);
    const at::Tensor factor =
        factor_for_weight(layer.kind(), magnitude(layer, adapter) / merge_norm_, weight.dim());
    return (factor * (weight + delta)).to(weight.scalar_type());
  }

  at::Tensor unmerge(LoraLayerImpl& layer, const std::string& adapter,
                     const at::Tensor& weight) override {
    const at::Tensor delta = get_delta_weight(layer, adapter).to(weight.scalar_type());
    if (!merge_norm_.defined()) return weight - delta;
    const at::Tensor factor =
        factor_for_weight(layer.kind(), magnitude(layer, adapter) / merge_norm_, weight.dim());
    merge_norm_ = at::Tensor();
    return (weight / factor - delta).to(weight.scalar_type());
  }

  std::string mixed_batch_refusal() const override {
    return "Cannot pass `adapter_names` when DoRA is enabled";
  }

 private:
  static at::Tensor magnitude(const LoraLayerImpl& layer, const std::string& adapter) {
    const AdapterDictImpl* dict = layer.find_adapter_dict(kMagnitudeKey);
    PEFT_CHECK(dict && dict->contains(adapter), AdapterNotFoundError, "dora",
               "adapter \"" << adapter << "\" has no DoRA magnitude on this layer");
    return dict->get<FactorImpl>(adapter)->weight;
  }

  // The bias broadcast over the output's channel dimension: last for Linear, 1 for ConvNd (batch,
  // out, ...).
  static at::Tensor channel_shaped(const at::Tensor& bias, const at::Tensor& result,
                                   LayerKind kind) {
    if (kind == LayerKind::kLinear || kind == LayerKind::kConv1D) return bias;
    std::vector<int64_t> shape(static_cast<size_t>(result.dim()), 1);
    shape[1] = -1;
    return bias.view(shape);
  }

  at::Tensor merge_norm_;  // ||W + dW|| at merge time
};

}  // namespace

std::shared_ptr<LoraVariant> make_dora_variant(const LoraLayerImpl& layer,
                                               const AdapterSettings& settings) {
  PEFT_CHECK(layer.kind() != LayerKind::kParam, ConfigError, "target_parameters",
             "lora.ParamWrapper does not work with LoRA variants (use_dora=True)");
  PEFT_CHECK(!settings.lora_bias, ConfigError, "lora", "DoRA does not support lora_bias=True");
  return std::make_shared<DoraVariant>();
}

}  // namespace peft::nn::variants
