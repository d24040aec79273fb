// Trainable tokens on an adapter-ready Embedding (or a Linear tied to one): PEFT's TrainableTokensLayer
// (tuners/trainable_tokens/layer.py) with its module path <layer>.token_adapter.trainable_tokens_delta.<adapter>.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/parameterdict.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>

#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft::nn {
namespace {

// PEFT's TrainableTokensLayer module: trainable_tokens_delta is a ParameterDict keyed by adapter.
class TokenAdapterImpl : public torch::nn::Module {
 public:
  TokenAdapterImpl() { deltas = register_module("trainable_tokens_delta", torch::nn::ParameterDict()); }
  torch::nn::ParameterDict deltas{nullptr};
};

}  // namespace

void LoraLayerImpl::add_trainable_tokens(const std::string& adapter, const std::vector<int64_t>& indices,
                                         const at::Tensor& tied_delta) {
  PEFT_CHECK(kind_ == LayerKind::kEmbedding || kind_ == LayerKind::kLinear, UnsupportedError, "trainable_tokens",
             "trainable tokens need an Embedding (or a Linear tied to one); this layer is a " << to_string(kind_));
  PEFT_CHECK(!indices.empty(), ConfigError, "trainable_tokens", "trainable_token_indices is empty");
  const int64_t rows = weight_.size(0);
  for (int64_t i : indices) {
    PEFT_CHECK(i >= 0 && i < rows, ConfigError, "trainable_tokens",
               "token index " << i << " is outside the embedding's " << rows << " rows");
  }
  PEFT_CHECK(tokens_merged_.empty(), Error, "trainable_tokens", "cannot add trainable tokens while merged");
  delete_trainable_tokens(adapter);
  torch::NoGradGuard no_grad;
  TokenSlot slot;
  slot.indices = indices;
  slot.index = torch::tensor(indices, at::TensorOptions().dtype(at::kLong)).to(weight_.device());
  slot.original = weight_.detach().index_select(0, slot.index).clone();
  if (tied_delta.defined()) {
    PEFT_CHECK(tied_delta.size(0) == static_cast<int64_t>(indices.size()) && tied_delta.size(1) == weight_.size(1),
               ShapeMismatchError, "trainable_tokens",
               "tied trainable-token delta has shape " << tied_delta.sizes() << "; expected ("
                                                       << indices.size() << ", " << weight_.size(1) << ")");
    slot.delta = tied_delta;
    slot.tied = true;
  } else {
    if (!token_adapter_) token_adapter_ = register_module("token_adapter", std::make_shared<TokenAdapterImpl>());
    auto ta = std::static_pointer_cast<TokenAdapterImpl>(token_adapter_);
    slot.delta = ta->deltas->insert(adapter, slot.original.clone());
  }
  tokens_[adapter] = std::move(slot);
  set_active_adapters(active_, true);
}

void LoraLayerImpl::delete_trainable_tokens(const std::string& adapter) {
  auto it = tokens_.find(adapter);
  if (it == tokens_.end()) return;
  if (!it->second.tied && token_adapter_) {
    auto ta = std::static_pointer_cast<TokenAdapterImpl>(token_adapter_);
    if (ta->deltas->contains(adapter)) ta->deltas->pop(adapter);
  }
  tokens_.erase(it);
  tokens_merged_.erase(std::remove(tokens_merged_.begin(), tokens_merged_.end(), adapter), tokens_merged_.end());
}

bool LoraLayerImpl::has_trainable_tokens(const std::string& adapter) const { return tokens_.count(adapter) != 0; }

bool LoraLayerImpl::trainable_tokens_tied(const std::string& adapter) const {
  auto it = tokens_.find(adapter);
  return it != tokens_.end() && it->second.tied;
}

const std::vector<int64_t>& LoraLayerImpl::trainable_token_indices(const std::string& adapter) const {
  auto it = tokens_.find(adapter);
  PEFT_CHECK(it != tokens_.end(), AdapterNotFoundError, "trainable_tokens",
             "layer has no trainable tokens for adapter \"" << adapter << "\"");
  return it->second.indices;
}

at::Tensor LoraLayerImpl::trainable_tokens_delta(const std::string& adapter) const {
  auto it = tokens_.find(adapter);
  return it == tokens_.end() ? at::Tensor() : it->second.delta;
}

std::vector<std::string> LoraLayerImpl::trainable_tokens_names() const {
  std::vector<std::string> out;
  for (const auto& [name, slot] : tokens_) out.push_back(name);
  return out;
}

at::Tensor LoraLayerImpl::weight_with_tokens(const at::Tensor& weight) const {
  return weight_with_tokens(weight, active_);
}

at::Tensor LoraLayerImpl::weight_with_tokens(const at::Tensor& weight, const std::vector<std::string>& adapters) const {
  if (tokens_.empty() || !enabled_ || !tokens_merged_.empty()) return {};
  at::Tensor w;
  std::vector<int64_t> seen;
  for (const auto& name : adapters) {
    auto it = tokens_.find(name);
    if (it == tokens_.end()) continue;
    for (int64_t i : it->second.indices) {
      PEFT_CHECK(std::find(seen.begin(), seen.end(), i) == seen.end(), ConfigError, "trainable_tokens",
                 "active adapters overlap on token index " << i
                                                          << " (PEFT refuses overlapping trainable tokens as well)");
      seen.push_back(i);
    }
    // W' = W.index_copy(0, idx, delta): differentiable with respect to delta only.
    const at::Tensor& src = w.defined() ? w : weight;
    w = src.index_copy(0, it->second.index, it->second.delta.to(src.scalar_type()));
  }
  return w;
}

void LoraLayerImpl::merge_tokens(const std::vector<std::string>& adapters) {
  torch::NoGradGuard no_grad;
  for (const auto& name : adapters) {
    auto it = tokens_.find(name);
    if (it == tokens_.end()) continue;
    if (std::find(tokens_merged_.begin(), tokens_merged_.end(), name) != tokens_merged_.end()) continue;
    weight_.index_copy_(0, it->second.index, it->second.delta.detach().to(weight_.scalar_type()));
    tokens_merged_.push_back(name);
  }
}

void LoraLayerImpl::unmerge_tokens() {
  torch::NoGradGuard no_grad;
  while (!tokens_merged_.empty()) {
    const auto& slot = tokens_.at(tokens_merged_.back());
    weight_.index_copy_(0, slot.index, slot.original.to(weight_.scalar_type()));
    tokens_merged_.pop_back();
  }
}

}  // namespace peft::nn
