// MonteCLoRA's regulariser, summed over a model (the variant itself is
// src/lora/variants/monteclora.cpp). PEFT counterpart: LoraModel._get_monteclora_loss.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <string>
#include <vector>

namespace peft::nn {

// The mean, over the MonteCLoRA samplers of `adapters` in every LoRA layer of `model`, of
// kl_loss_weight * (Dirichlet KL + Wishart KL + Gaussian KL) (+ the sum of the squared expert
// weights with use_entropy): the term the trainer adds to the task loss. A sampler in eval mode
// contributes 0, as in PEFT. Computed from the last training forward's covariance and expert
// weights (or the loaded ones before any forward), so call it after the forward whose loss it joins
// and back-propagate both together. Undefined when no layer has a MonteCLoRA adapter among
// `adapters`.
at::Tensor monteclora_loss(torch::nn::Module& model, const std::vector<std::string>& adapters);

}  // namespace peft::nn
