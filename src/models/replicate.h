// Layer replication for the model zoo's families (private to the model zoo): validating the
// [start, end) ranges, building the new layer list whose entries share their source layer's
// parameter tensors, and updating config.json. Counterparts: replicate_layers and
// clone_module(share_weights=True) (peft/tuners/tuners_utils.py).
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace peft::models::detail {

using LayerRanges = std::vector<std::pair<int64_t, int64_t>>;

// The source index of every new layer: the concatenation of [start, end) over `ranges`, e.g.
// [[0, 1], [0, 2], [1, 2]] over 2 layers -> {0, 0, 1, 1}. Throws ConfigError listing every range
// outside 0 <= start < end <= num_layers; `layers_name` ("model.layers") names the list.
std::vector<size_t> replication_sources(const LayerRanges& ranges, int64_t num_layers,
                                        const std::string& layers_name);

// The modules of a list of module holders (DecoderLayer, Gpt2Block, ...).
template <class Holder>
std::vector<std::shared_ptr<torch::nn::Module>> as_modules(const std::vector<Holder>& layers) {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  out.reserve(layers.size());
  for (const auto& l : layers) out.push_back(l.ptr());
  return out;
}

// Builds the replicated layer list and registers it in place of the old one.
//   parent.<list_name> is a ModuleList holding `layers`; `full_name` is its dotted name in the
//   model
//   ("model.layers"). make(i) builds a fresh layer for new position i (of the same structure as
//   layers[sources[i]], with its per-position settings such as a layer index); its parameters
//   are then replaced by the source's tensors (the same TensorImpls: no new memory, and loading,
//   dtype moves and parameter counts see them once), its buffers get copies of the source's values
//   (PEFT deep-copies buffers) and its training flag follows the source.
// A new ModuleList of the copies replaces parent.<list_name> at the same position among parent's
// children, so module names read <full_name>.0 .. N-1 in the new order. The default CPU generator's
// state is restored afterwards: building draws random init values that are dropped, and PEFT's
// deepcopy draws none, so later draws (adapter init) stay as without replication.
// Throws UnsupportedError when a source layer already holds LoRA adapters, modules_to_save copies
// or trainable tokens (replicate before injecting, as PEFT's get_peft_model does).
void replicate_layer_list(torch::nn::Module& parent, const std::string& list_name,
                          const std::string& full_name,
                          const std::vector<std::shared_ptr<torch::nn::Module>>& layers,
                          const std::vector<size_t>& sources,
                          const std::function<std::shared_ptr<torch::nn::Module>(size_t)>& make);

// Makes `copy`, a freshly built module with `source`'s structure (same submodule and parameter
// names), hold source's parameter tensors, both in its parameter registry and in the members its
// forward reads (peft::nn layers, LayerNorm, RMSNorm); copies the buffers' values. `name` names the
// source in errors.
void share_parameters(torch::nn::Module& copy, torch::nn::Module& source, const std::string& name);

// config.json text with `patch` applied (JSON merge patch); "" when `text` is empty. Written with
// indent 2 and sorted keys, as transformers' save_pretrained writes config.json.
std::string patched_config_json(const std::string& text, const nlohmann::json& patch);

}  // namespace peft::models::detail
