// Merging adapters into the base weight and taking them out again (PEFT LoraLayer.merge / unmerge /
// get_delta_weight): plain LoRA adds scaling * B A; a variant supplies its own merge_safe /
// merge_unsafe / unmerge.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>

#include "mixed_kernel.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/lora/variant.h"

namespace peft::nn {
namespace {

// scaling * lora_B.bias, or undefined when the adapter has no LoRA bias.
at::Tensor bias_delta(const LoraLayerImpl& layer, const std::string& adapter,
                      c10::ScalarType dtype) {
  const at::Tensor b = layer.adapter_tensor(adapter, "lora_B.bias");
  return b.defined() ? (b * layer.scaling(adapter)).to(dtype) : at::Tensor();
}

}  // namespace

at::Tensor LoraLayerImpl::get_delta_weight(const std::string& adapter) const {
  auto v = variant(adapter);
  return v ? v->get_delta_weight(*this, adapter) : lora_delta_weight(adapter);
}

bool LoraLayerImpl::merged() const { return !merged_.empty() || (tokens_ && tokens_->merged()); }

void LoraLayerImpl::merge(std::optional<std::vector<std::string>> adapters, bool safe_merge) {
  const std::vector<std::string> names = adapters ? *adapters : active_;
  if (tokens_) tokens_->merge(weight_, names);
  std::vector<std::string> todo;
  for (const auto& n : names) {
    if (!has_adapter(n)) continue;
    if (std::find(merged_.begin(), merged_.end(), n) != merged_.end()) continue;
    if (auto v = variant(n)) v->check_mergeable(*this, n);
    todo.push_back(n);
  }
  if (todo.empty()) {
    const bool any =
        std::any_of(names.begin(), names.end(), [&](const auto& n) { return has_adapter(n); });
    if (any) warn("merge", "All adapters are already merged, nothing to do.");
    return;
  }
  check_base_mergeable();
  torch::NoGradGuard no_grad;
  // weight_ itself for a float base (updated in place); a dequantized copy for a quantized one,
  // committed below.
  at::Tensor W = float_weight();
  if (is_quantized()) {
    warn("merge", "Merge lora module to a quantized (" + to_string(kind_) +
                      ") layer may get different generations due to rounding errors.");
  }
  for (const auto& n : todo) {
    const auto v = variant(n);
    const at::Tensor b_delta = bias_delta(*this, n, W.scalar_type());
    PEFT_CHECK(
        !b_delta.defined() || has_bias(), Error, "merge",
        "adapter \""
            << n << "\" has lora_bias=True but the base layer has no bias, so it cannot be merged");
    if (safe_merge) {
      const at::Tensor w =
          v ? v->merge_safe(*this, n, W) : W + get_delta_weight(n).to(W.scalar_type());
      PEFT_CHECK(at::isfinite(w).all().item<bool>(), Error, "merge",
                 "NaNs detected in the merged weights. The adapter " << n << " seems to be broken");
      at::Tensor b;
      if (b_delta.defined()) {
        b = bias_ + b_delta;
        PEFT_CHECK(
            at::isfinite(b).all().item<bool>(), Error, "merge",
            "NaNs detected in the merged weights. The adapter " << n << " seems to be broken");
      }
      W.copy_(w);
      if (b.defined()) bias_.copy_(b);
    } else {
      if (v) {
        v->merge_unsafe(*this, n, W);
      } else {
        W.add_(get_delta_weight(n).to(W.scalar_type()));
      }
      if (b_delta.defined()) bias_.add_(b_delta);
    }
    merged_.push_back(n);
  }
  commit_float_weight(W);
}

void LoraLayerImpl::unmerge() {
  torch::NoGradGuard no_grad;
  if (!merged_
           .empty()) {  // with nothing to subtract, a quantized base is not dequantized for nothing
    at::Tensor W = float_weight();
    while (!merged_.empty()) {
      const std::string n = merged_.back();
      merged_.pop_back();
      if (auto v = variant(n)) {
        W.copy_(v->unmerge(*this, n, W));
      } else {
        W.sub_(get_delta_weight(n).to(W.scalar_type()));
      }
      const at::Tensor b_delta = bias_delta(*this, n, W.scalar_type());
      if (b_delta.defined()) bias_.sub_(b_delta.to(bias_.scalar_type()));
    }
    commit_float_weight(W);
  }
  if (tokens_) tokens_->unmerge(weight_);
}

void LoraLayerImpl::remove_all_adapters() {
  merged_.clear();  // the caller merged on purpose (merge_and_unload) or wants the adapters gone
                    // (unload)
  for (const auto& n : std::vector<std::string>(adapter_order_)) {
    if (auto v = variant(n)) v->remove(*this, n);
    destroy_adapter(n);
  }
  variants_.clear();
  settings_.clear();
  scaling_.clear();
  adapter_order_.clear();
  if (tokens_) tokens_->clear();
  if (modules_to_save_) {
    for (const auto& n : modules_to_save_->keys()) modules_to_save_->erase(n);
  }
  enabled_ = true;
  mixed_cache_->clear();
}

}  // namespace peft::nn
