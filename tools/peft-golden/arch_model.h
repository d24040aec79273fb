// Builds a module tree of peft::nn layers from a golden case's architecture.json and runs its
// forward list.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

namespace peft::golden {

struct ArchModel {
  std::shared_ptr<torch::nn::Module> root;
  std::vector<std::string> forward;  // module names and "relu"
  std::string input_name;            // empty when the case has no forward
};

// Reads `dir/architecture.json`, builds the modules and, when `dir/model.safetensors` exists, loads
// every parameter from it (missing, unexpected or mis-shaped tensors throw, all listed at once).
ArchModel build_arch_model(const std::string& dir);

// Applies the forward list to x.
at::Tensor run_forward(const ArchModel& model, const at::Tensor& x);

}  // namespace peft::golden
