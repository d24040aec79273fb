// Trainable tokens (PEFT TrainableTokensLayer, tuners/trainable_tokens/layer.py): per-adapter
// trainable rows of an embedding weight, substituted in forward, written into the weight by merge.
#include "peft/lora/trainable_tokens.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>

#include "peft/error.h"

namespace peft::nn {

TrainableTokensImpl::TrainableTokensImpl() {
  deltas_ = register_module("trainable_tokens_delta", torch::nn::ParameterDict());
}

void TrainableTokensImpl::add(const std::string& adapter, const std::vector<int64_t>& indices,
                              const at::Tensor& weight, const at::Tensor& tied_delta) {
  PEFT_CHECK(!indices.empty(), ConfigError, "trainable_tokens", "trainable_token_indices is empty");
  const int64_t rows = weight.size(0);
  for (int64_t i : indices) {
    PEFT_CHECK(i >= 0 && i < rows, ConfigError, "trainable_tokens",
               "token index " << i << " is outside the embedding's " << rows << " rows");
  }
  PEFT_CHECK(merged_.empty(), Error, "trainable_tokens",
             "cannot add trainable tokens while merged");
  remove(adapter);
  torch::NoGradGuard no_grad;
  Slot slot;
  slot.indices = indices;
  slot.index = torch::tensor(indices, at::TensorOptions().dtype(at::kLong)).to(weight.device());
  slot.original = weight.detach().index_select(0, slot.index).clone();
  if (tied_delta.defined()) {
    PEFT_CHECK(tied_delta.size(0) == static_cast<int64_t>(indices.size()) &&
                   tied_delta.size(1) == weight.size(1),
               ShapeMismatchError, "trainable_tokens",
               "tied trainable-token delta has shape " << tied_delta.sizes() << "; expected ("
                                                       << indices.size() << ", " << weight.size(1)
                                                       << ")");
    slot.delta = tied_delta;
    slot.tied = true;
  } else {
    slot.delta = deltas_->insert(adapter, slot.original.clone());
  }
  slots_[adapter] = std::move(slot);
}

void TrainableTokensImpl::remove(const std::string& adapter) {
  auto it = slots_.find(adapter);
  if (it == slots_.end()) return;
  if (!it->second.tied && deltas_->contains(adapter)) deltas_->pop(adapter);
  slots_.erase(it);
  merged_.erase(std::remove(merged_.begin(), merged_.end(), adapter), merged_.end());
}

void TrainableTokensImpl::clear() {
  for (const auto& name : names()) remove(name);
  merged_.clear();
}

bool TrainableTokensImpl::tied(const std::string& adapter) const {
  auto it = slots_.find(adapter);
  return it != slots_.end() && it->second.tied;
}

const std::vector<int64_t>& TrainableTokensImpl::indices(const std::string& adapter) const {
  auto it = slots_.find(adapter);
  PEFT_CHECK(it != slots_.end(), AdapterNotFoundError, "trainable_tokens",
             "layer has no trainable tokens for adapter \"" << adapter << "\"");
  return it->second.indices;
}

at::Tensor TrainableTokensImpl::delta(const std::string& adapter) const {
  auto it = slots_.find(adapter);
  return it == slots_.end() ? at::Tensor() : it->second.delta;
}

std::vector<std::string> TrainableTokensImpl::names() const {
  std::vector<std::string> out;
  for (const auto& [name, slot] : slots_) out.push_back(name);
  return out;
}

at::Tensor TrainableTokensImpl::substituted(const at::Tensor& weight,
                                            const std::vector<std::string>& adapters) const {
  at::Tensor w;
  std::vector<int64_t> seen;
  for (const auto& name : adapters) {
    auto it = slots_.find(name);
    if (it == slots_.end()) continue;
    for (int64_t i : it->second.indices) {
      PEFT_CHECK(std::find(seen.begin(), seen.end(), i) == seen.end(), ConfigError,
                 "trainable_tokens",
                 "active adapters overlap on token index "
                     << i << " (PEFT refuses overlapping trainable tokens as well)");
      seen.push_back(i);
    }
    // W' = W.index_copy(0, idx, delta): differentiable with respect to delta only.
    const at::Tensor& src = w.defined() ? w : weight;
    w = src.index_copy(0, it->second.index, it->second.delta.to(src.scalar_type()));
  }
  return w;
}

void TrainableTokensImpl::merge(at::Tensor& weight, const std::vector<std::string>& adapters) {
  torch::NoGradGuard no_grad;
  for (const auto& name : adapters) {
    auto it = slots_.find(name);
    if (it == slots_.end()) continue;
    if (std::find(merged_.begin(), merged_.end(), name) != merged_.end()) continue;
    weight.index_copy_(0, it->second.index, it->second.delta.detach().to(weight.scalar_type()));
    merged_.push_back(name);
  }
}

void TrainableTokensImpl::unmerge(at::Tensor& weight) {
  torch::NoGradGuard no_grad;
  while (!merged_.empty()) {
    const auto& slot = slots_.at(merged_.back());
    weight.index_copy_(0, slot.index, slot.original.to(weight.scalar_type()));
    merged_.pop_back();
  }
}

void TrainableTokensImpl::set_trainable(const std::vector<std::string>& active, bool trainable) {
  for (auto& [name, slot] : slots_) {
    const bool on = trainable && std::find(active.begin(), active.end(), name) != active.end();
    slot.delta.set_requires_grad(on);
  }
}

}  // namespace peft::nn
