// Saving an adapter whose init changed the base (PiSSA, OLoRA, CorDA, LoRA-GA) as a plain LoRA for
// the original base weights, and the warning when such an adapter is loaded. PEFT counterparts:
// PeftModel.save_pretrained(..., path_initial_model_for_weight_conversion),
// LoraModel.subtract_mutated_init, _check_new_adapter_config.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "peft/config.h"

namespace peft::detail {

// PEFT's PiSSA / OLoRA / CorDA / LoRA-GA -> LoRA conversion on save (save_pretrained(...,
// path_initial_model_for_weight_conversion), §3.13 of the semantics): with A0, B0 from the initial
// adapter folder `initial_dir`, every lora_A becomes [A; A0] (rows) and every lora_B [B, -B0]
// (columns), so that s B' A' = s (B A - B0 A0) is the update relative to the ORIGINAL base. Every
// other key is dropped (PEFT does the same: modules_to_save, embedding LoRA and DoRA magnitudes are
// lost). The config gets r and lora_alpha doubled (alpha * sqrt(2) with rsLoRA), rank_pattern /
// alpha_pattern values doubled and init_lora_weights = true. The initial folder's
// adapter_config.json is rewritten with init_lora_weights = true, as PEFT does.
void convert_mutated_init_to_lora(LoraConfig& config,
                                  std::vector<std::pair<std::string, at::Tensor>>& state,
                                  const std::string& initial_dir);

// Warns when the adapter loaded from `dir` was initialised by a method that changes the base
// weights (InitLoraWeights::mutates_base()): loading it runs that initialisation on the base again,
// so it should not be combined with other adapters (PEFT's _check_new_adapter_config warns for
// PiSSA, CorDA and OLoRA).
void warn_if_mutating_init(const LoraConfig& config, const std::string& dir);

}  // namespace peft::detail
