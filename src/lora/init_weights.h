// Initialisation helpers shared by the LoRA layer types (PEFT reset_lora_parameters and nn.Module defaults).
#pragma once

#include <ATen/core/Tensor.h>

#include "peft/config.h"

namespace peft::detail {

// nn.Linear / nn.ConvNd default weight init: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void default_weight_init_(at::Tensor& weight);
// nn.Linear / nn.ConvNd default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan_in.
void default_bias_init_(at::Tensor& bias, const at::Tensor& weight);

// Initialises A, B (and B's bias) of a Linear or Conv LoRA per init_lora_weights, following PEFT's RNG order:
// constructor init of A, of B (and bias), then the re-init. Throws ConfigError / UnsupportedError for inits
// that are not available for this layer kind.
void init_linear_like_factors(const InitLoraWeights& init, int r, at::Tensor& A, at::Tensor& B,
                              at::Tensor& B_bias, const char* layer_kind);

}  // namespace peft::detail
