// Many adapters in one batch (PEFT's forward(..., adapter_names=[...])): every row of the batch
// runs with its own adapter, or with none ("__base__"), in one forward. PEFT counterparts:
// LoraModel._enable_peft_forward_hooks and LoraLayer._mixed_batch_forward,
// ModulesToSaveWrapper._mixed_batch_forward.
#pragma once

#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "peft/lora/forward_context.h"

namespace peft::nn {

// The name that selects the base model for a row.
inline constexpr const char* kBaseAdapterName = "__base__";

// PEFT's checks of adapter_names against a model: not in training mode (ConfigError) and every name
// other than
// "__base__" the name of a LoRA adapter of some layer (AdapterNotFoundError listing the unknown
// ones and the adapters there are).
void check_adapter_names(const torch::nn::Module& model,
                         const std::vector<std::string>& adapter_names);

// Installs adapter_names for every forward of `model` on this thread until destruction (the rest of
// the current ForwardContext is kept). Row i of every batch gets adapter_names[i] alone, whatever
// the active adapters are; names absent from a layer leave its rows to the base layer there. Layers
// refuse the batch (ShapeMismatchError) when its size differs from the number of names, and
// (ConfigError) while adapters are merged or when a named adapter uses DoRA. A modules_to_save
// layer gives each row its adapter's copy (the original module for
// "__base__" and for adapters without a copy there); trainable tokens likewise.
class [[nodiscard]] MixedBatchGuard {
 public:
  MixedBatchGuard(const torch::nn::Module& model, std::vector<std::string> adapter_names,
                  MixedBatchKernel kernel = MixedBatchKernel::kGathered);
  MixedBatchGuard(const MixedBatchGuard&) = delete;
  MixedBatchGuard& operator=(const MixedBatchGuard&) = delete;

 private:
  static ForwardContext with_names(std::vector<std::string> names, MixedBatchKernel kernel);
  ForwardContextGuard guard_;
};

}  // namespace peft::nn
