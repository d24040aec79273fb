// The adapter-ready layer's forward (PEFT LoraLayer.forward): the base computation, then each
// active, unmerged adapter's contribution, plain LoRA or through its variant.
#include <ATen/ATen.h>
#include <torch/types.h>

#include "peft/lora/forward_context.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/lora/variant.h"

namespace peft::nn {

at::Tensor LoraLayerImpl::forward_with_adapters(const at::Tensor& x) const {
  const at::Tensor* w = &weight_;
  const at::Tensor* b = &bias_;
  std::shared_ptr<FactorImpl> copy;
  if (enabled_ && modules_to_save_ && !active_.empty() &&
      modules_to_save_->contains(active_.front())) {
    copy = modules_to_save_->copy(active_.front());  // the copy stands in for the base weights
    w = &copy->weight;
    b = &copy->bias;
  }
  const ForwardContext& context = current_forward_context();
  if (context.adapter_names &&
      (!settings_.empty() || modules_to_save_ || (tokens_ && !tokens_->empty()))) {
    return forward_mixed(x, *context.adapter_names);
  }
  if (observer_) observer_(x);
  at::Tensor tokens_w;
  if (tokens_ && enabled_ && !tokens_->merged()) tokens_w = tokens_->substituted(*w, active_);
  if (tokens_w.defined()) w = &tokens_w;
  at::Tensor result = base_forward(x, *w, *b);
  if (!enabled_ || merged() || settings_.empty()) return result;
  const auto dtype = result.scalar_type();
  for (const auto& name : active_) {
    if (!has_adapter(name)) continue;
    result = add_output(std::move(result), x, name);
  }
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

at::Tensor LoraLayerImpl::add_output(at::Tensor result, const at::Tensor& x,
                                     const std::string& adapter) const {
  if (auto v = variant(adapter)) return v->forward(*this, adapter, x, std::move(result));
  return add_adapter_output(std::move(result), x, adapter);
}

at::Tensor LoraLayerImpl::add_adapter_output(at::Tensor result, const at::Tensor& x,
                                             const std::string& adapter) const {
  const at::Tensor y = lora_forward(lora_dropout(x, adapter), adapter);
  return result + y.to(result.scalar_type());
}

at::Tensor LoraLayerImpl::lora_dropout(const at::Tensor& x, const std::string& adapter) const {
  // The input is cast to the factors' dtype first (PEFT _cast_input_dtype), so dropout draws on
  // that dtype.
  at::Tensor xin = x;
  if (lora_A_ && lora_A_->contains(adapter)) {
    const auto dtype = lora_A_->get<FactorImpl>(adapter)->weight.scalar_type();
    if (x.scalar_type() != dtype) xin = x.to(dtype);
  }
  const double p = adapter_settings(adapter).lora_dropout;
  return p > 0.0 ? at::dropout(xin, p, is_training()) : xin;
}

}  // namespace peft::nn
