// CorDA preprocessing: collects each targeted Linear / Conv1D layer's input covariance from
// calibration data and attaches the context-oriented decomposition (U, S, V of W·C) that
// init_lora_weights = "corda" turns into the adapter when get_peft_model runs. PEFT counterpart:
// preprocess_corda (src/peft/tuners/lora/corda.py).
#pragma once

#include <torch/nn/module.h>

#include <functional>

#include "peft/config.h"

namespace peft {

// Builds the CorDA decomposition of every layer `config` targets (Linear and GPT-2 Conv1D; other
// layer kinds are skipped, as in PEFT) and attaches it as init data "corda_U" (out, r), "corda_S"
// (r,), "corda_V" (in, r) — already cut to the layer's r: the largest components for corda_method
// "ipm", the smallest for "kpm". Call before get_peft_model(model, config) with init_lora_weights =
// "corda".
//
// `config.corda_config` (default CordaConfig{} when unset):
// - cache_file: if it exists and is non-empty, the decomposition is read from it (safetensors, keys
//   "<layer>.eigens.S_WC" / "U_WC" / "V_WC") and nothing runs; otherwise it is written there at the
//   end.
// - covariance_file: the same for the per-layer covariance matrices (safetensors, key = layer
// name).
// - use_float16_for_covariance: keep the inputs in the model's dtype instead of float32.
// - verbose: one progress line per layer on stderr.
// `run_model` runs the model on calibration data (forward only; it runs in eval mode under
// NoGradGuard). It is needed unless one of the files above already exists (ConfigError otherwise).
// The model's training flags are restored afterwards and the input observers are removed on every
// path.
void preprocess_corda(torch::nn::Module& model, const LoraConfig& config,
                      const std::function<void()>& run_model = {});

}  // namespace peft
