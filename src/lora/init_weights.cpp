#include "init_weights.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>

#include "peft/error.h"

namespace peft::detail {

void default_weight_init_(at::Tensor& weight) {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

void default_bias_init_(at::Tensor& bias, const at::Tensor& weight) {
  torch::NoGradGuard no_grad;
  int64_t fan_in = weight.size(1);
  for (int64_t d = 2; d < weight.dim(); ++d) fan_in *= weight.size(d);
  double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  bias.uniform_(-bound, bound);
}

void init_linear_like_factors(const InitLoraWeights& init, int r, at::Tensor& A, at::Tensor& B,
                              at::Tensor& B_bias, const char* /*layer_kind*/) {
  using K = InitLoraWeights::Kind;
  torch::NoGradGuard no_grad;
  // Constructor init, as nn.Linear(in, r) then nn.Linear(r, out) would do.
  default_weight_init_(A);
  default_weight_init_(B);
  if (B_bias.defined()) default_bias_init_(B_bias, B);
  switch (init.kind) {
    case K::kFalse:
      return;  // keep the constructor init (both factors non-zero: for tests and debugging)
    case K::kTrue:
      default_weight_init_(A);
      B.zero_();
      if (B_bias.defined()) B_bias.zero_();
      return;
    case K::kGaussian:
      A.normal_(0.0, 1.0 / r);  // PEFT: std = 1/r (not 1/sqrt(r))
      B.zero_();
      if (B_bias.defined()) B_bias.zero_();
      return;
    default:
      return;  // weight-based inits: LoraLayerImpl::init_from_weight replaces both factors next
  }
}

}  // namespace peft::detail
