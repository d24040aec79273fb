// Trainable tokens on an adapter-ready Embedding (or a Linear whose weight is tied to one): per
// adapter, rows `indices` of the weight are replaced by a trainable stand-in
// `trainable_tokens_delta.<adapter>` (n, dim), initialised as a copy of those rows (despite its
// name, PEFT stores the rows, not a difference). PEFT counterpart: TrainableTokensLayer
// (tuners/trainable_tokens/layer.py), held as the layer's "token_adapter".
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/parameterdict.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <string>
#include <vector>

namespace peft::nn {

class TrainableTokensImpl : public torch::nn::Module {
 public:
  TrainableTokensImpl();
  // Adds (or replaces) `adapter`'s rows of `weight` (rows, dim): ConfigError for an empty list or
  // an index outside the rows, Error while merged. `tied_delta` makes the slot share another
  // layer's (n, dim) parameter (a tied lm_head), which is then neither registered nor saved again.
  void add(const std::string& adapter, const std::vector<int64_t>& indices,
           const at::Tensor& weight, const at::Tensor& tied_delta = {});
  void remove(const std::string& adapter);
  void clear();
  bool has(const std::string& adapter) const { return slots_.count(adapter) != 0; }
  bool empty() const { return slots_.empty(); }
  bool tied(const std::string& adapter) const;
  const std::vector<int64_t>& indices(const std::string& adapter) const;
  at::Tensor delta(const std::string& adapter) const;  // undefined when absent
  std::vector<std::string> names() const;

  // `weight` with the rows of `adapters` substituted (differentiable with respect to the deltas
  // only); undefined when none of them has tokens here. ConfigError when two of them claim the same
  // row (PEFT refuses too).
  at::Tensor substituted(const at::Tensor& weight, const std::vector<std::string>& adapters) const;
  // Writes the rows of `adapters` into `weight` in place; unmerge restores the original rows, last
  // merged first.
  void merge(at::Tensor& weight, const std::vector<std::string>& adapters);
  void unmerge(at::Tensor& weight);
  bool merged() const { return !merged_.empty(); }
  // requires_grad = trainable for the deltas of `active`, false for the others.
  void set_trainable(const std::vector<std::string>& active, bool trainable);

 private:
  struct Slot {
    std::vector<int64_t> indices;
    at::Tensor index;     // int64 tensor of indices on the weight's device
    at::Tensor delta;     // (n, dim) parameter
    at::Tensor original;  // (n, dim): the base rows
    bool tied = false;
  };
  torch::nn::ParameterDict deltas_{nullptr};
  std::map<std::string, Slot> slots_;
  std::vector<std::string> merged_;
};
TORCH_MODULE(TrainableTokens);

}  // namespace peft::nn
