// modules_to_save on an adapter-ready layer: per adapter a full trainable copy of the layer's
// weight and bias
// ("modules_to_save.<adapter>.weight"), used instead of the base weights while that adapter is the
// first active one. PEFT counterpart: ModulesToSaveWrapper (utils/other.py), held here as the
// layer's "modules_to_save" child.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <utility>
#include <vector>

#include "peft/lora/adapter_dict.h"

namespace peft::nn {

class ModulesToSaveImpl : public AdapterDictImpl {
 public:
  // A copy of `weight` / `bias` (bias may be undefined) for `adapter`; with `shared_weight`
  // (ensure_weight_tying) the copy's weight IS that tensor (another layer's copy), so the tied
  // copies train as one.
  void add(const std::string& adapter, const at::Tensor& weight, const at::Tensor& bias,
           const at::Tensor& shared_weight = {});
  // The copy's tensors keyed "weight" / "bias".
  std::vector<std::pair<std::string, at::Tensor>> tensors(const std::string& adapter) const;
  std::shared_ptr<FactorImpl> copy(const std::string& adapter) const {
    return get<FactorImpl>(adapter);
  }
  // requires_grad = trainable for the copy of the active adapter; Error when more than one adapter
  // with a copy is active (PEFT: "Expected only one adapter to be active for modules_to_save").
  void set_trainable(const std::vector<std::string>& active, bool trainable);
};
TORCH_MODULE(ModulesToSave);

}  // namespace peft::nn
