// modules_to_save copies of an adapter-ready layer (PEFT ModulesToSaveWrapper, utils/other.py).
#include "peft/lora/modules_to_save.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>

#include "peft/error.h"

namespace peft::nn {

void ModulesToSaveImpl::add(const std::string& adapter, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& shared_weight) {
  torch::NoGradGuard no_grad;
  PEFT_CHECK(!shared_weight.defined() || shared_weight.sizes() == weight.sizes(),
             ShapeMismatchError, "modules_to_save",
             "a tied copy must have the weight's shape " << weight.sizes() << "; got "
                                                         << shared_weight.sizes());
  at::Tensor w = shared_weight.defined() ? shared_weight : weight.detach().clone();
  at::Tensor b = bias.defined() ? bias.detach().clone() : at::Tensor();
  insert(adapter, std::make_shared<FactorImpl>(w, b));
}

std::vector<std::pair<std::string, at::Tensor>> ModulesToSaveImpl::tensors(
    const std::string& adapter) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (!contains(adapter)) return out;
  auto c = copy(adapter);
  out.emplace_back("weight", c->weight);
  if (c->bias.defined()) out.emplace_back("bias", c->bias);
  return out;
}

void ModulesToSaveImpl::set_trainable(const std::vector<std::string>& active, bool trainable) {
  int active_copies = 0;
  for (const auto& name : keys()) {
    const bool on = std::find(active.begin(), active.end(), name) != active.end();
    active_copies += on ? 1 : 0;
    for (auto& [key, t] : tensors(name)) t.set_requires_grad(on && trainable);
  }
  PEFT_CHECK(active_copies <= 1, Error, "set_adapter",
             "Expected only one adapter to be active for modules_to_save, found " << active_copies);
}

}  // namespace peft::nn
