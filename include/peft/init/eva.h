// EVA (Explained Variance Adaptation): data-driven LoRA init. An incremental PCA of every targeted
// layer's inputs gives lora_A; ranks are redistributed across layers by explained variance; B stays
// 0. PEFT counterparts: get_eva_state_dict / initialize_lora_eva_weights
// (src/peft/tuners/lora/eva.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "peft/batch.h"
#include "peft/config.h"

namespace peft {

class PeftModel;

// Runs the model on one batch (PEFT's forward_fn; its default is model(**inputs)); the output is
// ignored. It runs with adapters disabled, the model in eval mode and under NoGradGuard. Moving the
// batch to the model's device is up to it.
using EvaForwardFn = std::function<void(const train::Batch& batch)>;

struct EvaOptions {
  // One line per batch on stderr: "eva: epoch E batch B: <converged>/<layers> layers have
  // converged".
  bool show_progress = false;
  // Passes over `batches` before giving up. PEFT cycles its dataloader until every layer has
  // converged, which never ends when a layer cannot reach tau; here the search stops after
  // max_epochs passes and then fails like PEFT's final check. 0 = no limit (PEFT).
  int64_t max_epochs = 100;
};

// Which rows of a layer input enter the PCA (PEFT prepare_model_inputs_fn_language_modeling +
// prepare_layer_inputs_fn_language_modeling): the layer input is flattened to (tokens, features)
// and the tokens kept are those with attention_mask != 0 and, when eva_config.use_label_mask,
// labels != label_mask_value. With neither tensor defined every row is used (e.g. a model whose
// layers see (batch, features)). Labels that are not per token (sequence classification, (batch,))
// are not a mask: they are ignored with a warning.

// PEFT get_eva_state_dict: runs the batches through the model (adapters disabled) and returns, per
// Linear / GPT-2 Conv1D layer carrying `adapter` (by full module name), the new lora_A (new_r,
// in_features): the top-new_r principal components of the layer's inputs (divided by sqrt(singular
// values) when eva_config.whiten). new_r comes from pooling every layer's explained-variance ratios
// and taking the global top sum(r_layer); it may be 0 (a (0, in_features) tensor: the layer loses
// its adapter on load). Each layer's PCA keeps round(r_layer * rho) components; layers whose inputs
// on the first batch are identical share one. Batches are cycled until the first new_r components
// of every layer keep a cosine similarity >= tau between consecutive updates. Tensors are float32 /
// float64 on the layer's device. Throws ConfigError (no batches, no forward, no eva_config on a
// non-"eva" adapter, round(r * rho) > in_features, ...), ShapeMismatchError (layer input rows vs.
// mask) and Error when a layer has not converged after options.max_epochs passes.
std::map<std::string, at::Tensor> get_eva_state_dict(PeftModel& model,
                                                     const std::vector<train::Batch>& batches,
                                                     const EvaForwardFn& forward,
                                                     const std::string& adapter = "default",
                                                     const EvaOptions& options = {});

// The same for a model before get_peft_model (PEFT: get_eva_state_dict(model, dataloader,
// peft_config)): the layers are the Linear / Conv1D layers `config` targets; config.eva_config is
// required unless init_lora_weights is "eva". The result can be passed to
// initialize_lora_eva_weights after get_peft_model.
std::map<std::string, at::Tensor> get_eva_state_dict(torch::nn::Module& model,
                                                     const LoraConfig& config,
                                                     const std::vector<train::Batch>& batches,
                                                     const EvaForwardFn& forward,
                                                     const EvaOptions& options = {});

// PEFT initialize_lora_eva_weights(model, dataloader): get_eva_state_dict, then loads it (below).
void initialize_lora_eva_weights(PeftModel& model, const std::vector<train::Batch>& batches,
                                 const EvaForwardFn& forward,
                                 const std::string& adapter = "default",
                                 const EvaOptions& options = {});

// PEFT initialize_lora_eva_weights(model, eva_state_dict=...): for every layer carrying `adapter`:
// - in the state dict with 0 rows: the adapter is removed from the layer;
// - new rank != the layer's r: the adapter is re-created with r = new rank and, when
//   eva_config.adjust_scaling_factors, lora_alpha *= new_r / r (B = 0, dropout etc. as before);
// - lora_A <- the state-dict tensor;
// - not in the state dict (Embedding layers, ...): re-initialised with init_lora_weights = true,
// with a
//   warning.
// The stored config is rewritten: target_modules = the layers that kept the adapter (full names,
// condensed to suffixes as PEFT does from 20 names on), rank_pattern / alpha_pattern = {layer: r /
// alpha} for every layer whose value differs from config.r / config.lora_alpha. Requires
// init_lora_weights = "eva" (ConfigError) and at most one active adapter (UnsupportedError). Every
// state-dict tensor is checked before anything changes (ShapeMismatchError naming each bad layer);
// entries naming no layer of the adapter are ignored with a warning.
void initialize_lora_eva_weights(PeftModel& model, std::map<std::string, at::Tensor> eva_state_dict,
                                 const std::string& adapter = "default");

}  // namespace peft
