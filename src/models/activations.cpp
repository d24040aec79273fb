#include "activations.h"

#include <ATen/ATen.h>
#include <c10/util/MathConstants.h>

#include <cmath>
#include <limits>

#include "peft/error.h"

namespace peft::models::detail {

Activation parse_activation(const std::string& name, const std::string& model_type,
                            const std::string& field) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new" || name == "gelu_fast")
    return Activation::kGeluNew;  // the same tanh formula
  if (name == "gelu_pytorch_tanh") return Activation::kGeluPytorchTanh;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "tanh") return Activation::kTanh;
  throw ConfigError("config.json",
                    model_type + " config field \"" + field + "\" is \"" + name +
                        "\"; accepted: gelu, gelu_new, gelu_fast, gelu_pytorch_tanh, quick_gelu, "
                        "relu, silu, swish, tanh");
}

at::Tensor activate(const at::Tensor& x, Activation a) {
  switch (a) {
    case Activation::kGelu:  // GELUActivation: exact erf form
      return at::gelu(x);
    case Activation::kGeluNew:  // NewGELUActivation, written as transformers writes it
      return 0.5 * x *
             (1.0 + at::tanh(std::sqrt(2.0 / c10::pi<double>) * (x + 0.044715 * at::pow(x, 3.0))));
    case Activation::kGeluPytorchTanh:
      return at::gelu(x, "tanh");
    case Activation::kQuickGelu:
      return x * at::sigmoid(1.702 * x);
    case Activation::kRelu:
      return at::relu(x);
    case Activation::kSilu:
      return at::silu(x);
    case Activation::kTanh:
      return at::tanh(x);
  }
  return x;
}

double dtype_min(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return static_cast<double>(std::numeric_limits<float>::lowest());
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    case at::kHalf:
      return -65504.0;
    case at::kBFloat16:
      return -3.3895313892515355e38;
    default:
      throw UnsupportedError(
          "models", std::string("activations of dtype ") + c10::toString(t) + " are not supported");
  }
}

}  // namespace peft::models::detail
