// DoRA's magnitude bookkeeping shared by every layer type (PEFT dora.py: DoraLinearLayer, DoraEmbeddingLayer,
// DoraConv2dLayer get_weight_norm and the merge factor layouts).
#include <ATen/ATen.h>
#include <torch/types.h>

#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft::nn {

at::Tensor LoraLayerImpl::dora_magnitude(const std::string& adapter) const {
  if (!lora_magnitude_vector_ || !lora_magnitude_vector_->contains(adapter)) return {};
  return lora_magnitude_vector_->get<FactorImpl>(adapter)->weight;
}

void LoraLayerImpl::set_dora_magnitude(const std::string& adapter, at::Tensor magnitude) {
  if (!lora_magnitude_vector_) lora_magnitude_vector_ = register_module("lora_magnitude_vector", AdapterDict());
  lora_magnitude_vector_->insert(adapter, std::make_shared<FactorImpl>(std::move(magnitude), at::Tensor()));
}

at::Tensor LoraLayerImpl::dora_weight_norm(const at::Tensor& weight, const at::Tensor& delta) const {
  at::Tensor w = weight.detach() + delta.detach();
  switch (kind_) {
    case LayerKind::kLinear:
      return at::linalg_vector_norm(w, 2, {1}).to(weight.scalar_type());
    case LayerKind::kConv1D:  // stored (in, out): norms of the (out, in) rows
      return at::linalg_vector_norm(w, 2, {0}).to(weight.scalar_type());
    case LayerKind::kEmbedding:  // PEFT runs the Linear norm on W^T (dim, vocab): one norm per embedding column
      return at::linalg_vector_norm(w, 2, {0}).to(weight.scalar_type());
    default: {
      std::vector<int64_t> dims;
      for (int64_t d = 1; d < w.dim(); ++d) dims.push_back(d);
      // (out, 1, 1...) -> (1, out, 1...): PEFT's DoraConv*Layer layout
      return at::linalg_vector_norm(w, 2, dims, /*keepdim=*/true).transpose(0, 1).to(weight.scalar_type());
    }
  }
}

at::Tensor LoraLayerImpl::dora_factor_for_weight(const at::Tensor& factor) const {
  switch (kind_) {
    case LayerKind::kLinear: return factor.reshape({-1, 1});
    case LayerKind::kConv1D: return factor.reshape({1, -1});
    case LayerKind::kEmbedding: return factor.reshape({1, -1});
    default: {
      std::vector<int64_t> shape(static_cast<size_t>(weight_.dim()), 1);
      shape[0] = -1;
      return factor.reshape(shape);
    }
  }
}

}  // namespace peft::nn
