// LoRA-GA preprocessing: estimates the full fine-tuning gradient of every targeted Linear / Conv1D
// weight from a few user training steps and attaches it, so that init_lora_weights = "lora_ga"
// aligns the adapter with it when get_peft_model runs. PEFT counterpart: preprocess_loraga /
// estimate_gradients (src/peft/tuners/lora/loraga.py).
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <string>

#include "peft/config.h"

namespace peft {

// Attaches init data "loraga_grad" to every layer `config` targets (Linear and GPT-2 Conv1D; other
// kinds are skipped, as in PEFT): the mean over all backward passes of the gradient of the layer's
// base weight, in the weight's stored layout and dtype. Call before get_peft_model(model, config)
// with init_lora_weights = "lora_ga"; `config.lora_ga_config` must be set (PEFT requires it).
//
// `train_step` runs forward + backward passes (any number; it may call zero_grad between them —
// every incoming gradient is counted). While it runs the model is in training mode, grad mode is on
// and only the targeted base weights require grad; every parameter's requires_grad, every module's
// training flag and the weights' previous .grad are restored afterwards, also when train_step
// throws. `cache_file`: if it exists and is non-empty, the gradients are read from it (safetensors,
// keys
// "<layer>._peft_loraga_grad") and train_step is not needed; otherwise they are written there at
// the end.
void preprocess_loraga(torch::nn::Module& model, const LoraConfig& config,
                       const std::function<void()>& train_step = {},
                       const std::string& cache_file = "");

}  // namespace peft
