// The containers that give adapter parameters PEFT's names: a ModuleDict keyed by adapter name, and
// one LoRA factor (a weight and optional bias), so that parameters read ...lora_A.<adapter>.weight
// exactly as in PEFT.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft::nn {

// A weight (and optionally a bias) registered as "weight" / "bias".
class FactorImpl : public torch::nn::Module {
 public:
  FactorImpl(at::Tensor weight, at::Tensor bias);
  at::Tensor weight;
  at::Tensor bias;  // undefined when absent
};
TORCH_MODULE(Factor);

// A module whose children are named by adapter (PEFT's ModuleDict keyed by adapter name). Unlike
// torch::nn::ModuleDict, `erase` also unregisters the child, so its parameters disappear.
class AdapterDictImpl : public torch::nn::Module {
 public:
  void insert(const std::string& adapter, std::shared_ptr<torch::nn::Module> module);
  void erase(const std::string& adapter);
  bool contains(const std::string& adapter) const;
  std::shared_ptr<torch::nn::Module> at(const std::string& adapter) const;
  template <class T>
  std::shared_ptr<T> get(const std::string& adapter) const {
    return std::dynamic_pointer_cast<T>(at(adapter));
  }
  std::vector<std::string> keys() const;

 private:
  std::map<std::string, std::shared_ptr<torch::nn::Module>> items_;
};
TORCH_MODULE(AdapterDict);

}  // namespace peft::nn
