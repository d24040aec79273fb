// Arrow: token-wise routing over task-specific LoRA adapters by their SVD prototypes, with optional
// General Knowledge Subtraction (GenKnowSub) -- setting up a router model. PEFT counterparts:
// create_arrow_model, check_loaded_lora_compatibility_arrow,
// ensure_adapters_target_linear_layers_only (tuners/lora/arrow.py). The router itself is a LoRA
// variant: peft/lora/variants/arrow.h (ArrowLinearVariant).
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

// ArrowConfig lives in config.h: it is LoraConfig::arrow_config and round-trips through JSON there.
#include "peft/config.h"
#include "peft/lora/variants/arrow.h"

namespace peft {

class PeftModel;

// PEFT's create_arrow_model: loads the task adapters as task_0, task_1, ... (the first with
// PeftModel::from_pretrained), with use_gks the general adapters as gks_0, ..., checks them
// (add_arrow_router) and adds and activates the "arrow_router" adapter. Paths are local adapter
// folders (adapter_config.json + adapter_model.safetensors). Throws ConfigError (PEFT ValueError)
// for an empty task list, use_gks without general adapters, a folder without adapter_config.json
// and incompatible adapters; UnsupportedError (PEFT TypeError) for adapters on non-Linear layers.
std::shared_ptr<PeftModel> create_arrow_model(
    std::shared_ptr<torch::nn::Module> base_model,
    const std::vector<std::string>& task_specific_adapter_paths, const ArrowConfig& arrow_config,
    const std::vector<std::string>& general_adapter_paths = {});

// The second half of create_arrow_model on a model whose adapters are loaded already:
// config.task_adapter_names (required) and, with use_gks, config.gks_adapter_names name them.
// Checks that they share rank, A/B shapes and target-module short names
// (check_loaded_lora_compatibility_arrow) and sit on Linear-like layers
// (ensure_adapters_target_linear_layers_only), then adds "arrow_router" = LoraConfig{r,
// target_modules = the short names, arrow_config = config}, whose layers get the Arrow variant, and
// activates it.
void add_arrow_router(PeftModel& model, ArrowConfig config);

// PEFT's check_loaded_lora_compatibility_arrow: the sorted target-module short names and the agreed
// rank. As in PEFT the rank and A/B shapes compared are those of the last layer (module order)
// holding each adapter.
struct ArrowCompatibility {
  std::vector<std::string> target_modules;
  int r = 0;
};
ArrowCompatibility check_loaded_lora_compatibility_arrow(
    PeftModel& model, const std::vector<std::string>& adapter_names);
// PEFT's ensure_adapters_target_linear_layers_only (Linear, GPT-2 Conv1D, Conv1d); lists every
// offender.
void ensure_adapters_target_linear_layers_only(PeftModel& model,
                                               const std::vector<std::string>& adapter_names);

}  // namespace peft
