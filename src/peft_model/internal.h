// Helpers shared by the PeftModel seams in src/peft_model/ (private to this directory).
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "peft/config.h"
#include "peft/targeting.h"

namespace peft::nn {
class LoraLayerImpl;
}

namespace peft::detail {

using LayerPtr = std::shared_ptr<nn::LoraLayerImpl>;
using NamedLayers = std::vector<std::pair<std::string, LayerPtr>>;

// The adapter-ready layers that target_modules can match: every LoRA layer but the parameter slots
// (target_parameters), whose names are those of their owning modules.
NamedLayers module_layers(torch::nn::Module& model);

// Every named module of `model` as the targeting rules see it (adapter internals flagged,
// adapter-ready layers with their kind).
std::vector<ModuleInfo> module_infos(torch::nn::Module& model);

// The adapter-ready layer named exactly `name`, or whose name ends with `name` (PEFT's plain
// endswith), or null; its full name goes to `full_name` when given.
LayerPtr find_layer(torch::nn::Module& model, const std::string& name,
                    std::string* full_name = nullptr);

// Removes `adapter` from the layer: its LoRA, its modules_to_save copy and its trainable tokens.
void remove_adapter_everywhere(nn::LoraLayerImpl& layer, const std::string& adapter);

// The warning when ensure_weight_tying=True meets embeddings that are not tied; `what` names the
// layers concerned.
void warn_untied(const char* what);

bool ends_with(const std::string& s, const std::string& suffix);

}  // namespace peft::detail
