// transformers' ACT2FN activations used by the model zoo, and torch.finfo(dtype).min for additive
// masks (private to the model zoo).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace peft::models::detail {

enum class Activation { kGelu, kGeluNew, kGeluPytorchTanh, kQuickGelu, kRelu, kSilu, kTanh };

// gelu, gelu_new / gelu_fast, gelu_pytorch_tanh, quick_gelu, relu, silu / swish, tanh; ConfigError
// naming `model_type`'s config `field` otherwise.
Activation parse_activation(const std::string& name, const std::string& model_type,
                            const std::string& field);
at::Tensor activate(const at::Tensor& x, Activation a);

// torch.finfo(t).min: the value transformers adds for masked attention positions.
double dtype_min(at::ScalarType t);

}  // namespace peft::models::detail
