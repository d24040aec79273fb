// PEFT-named adapter containers: one factor module, and a ModuleDict keyed by adapter name.
#include "peft/lora/adapter_dict.h"

#include "peft/error.h"

namespace peft::nn {

FactorImpl::FactorImpl(at::Tensor w, at::Tensor b) {
  weight = register_parameter("weight", std::move(w));
  if (b.defined()) bias = register_parameter("bias", std::move(b));
}

void AdapterDictImpl::insert(const std::string& adapter,
                             std::shared_ptr<torch::nn::Module> module) {
  if (items_.count(adapter)) erase(adapter);
  items_[adapter] = register_module(adapter, std::move(module));
}

void AdapterDictImpl::erase(const std::string& adapter) {
  if (!items_.count(adapter)) return;
  items_.erase(adapter);
  unregister_module(adapter);
}

bool AdapterDictImpl::contains(const std::string& adapter) const {
  return items_.count(adapter) != 0;
}

std::shared_ptr<torch::nn::Module> AdapterDictImpl::at(const std::string& adapter) const {
  auto it = items_.find(adapter);
  PEFT_CHECK(it != items_.end(), AdapterNotFoundError, "lora",
             "adapter \"" << adapter << "\" has no entry in " << name());
  return it->second;
}

std::vector<std::string> AdapterDictImpl::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : items_) out.push_back(k);
  return out;
}

}  // namespace peft::nn
