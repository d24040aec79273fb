// PEFT adapter folders: adapter_config.json + adapter_model.safetensors, and PEFT's checkpoint key scheme.
// PEFT counterparts: get_peft_model_state_dict / set_peft_model_state_dict (utils/save_and_load.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "peft/config.h"

namespace peft::io {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";
inline constexpr const char* kCheckpointPrefix = "base_model.model.";
// Written into adapter_config.json's peft_version (a PEP 440 local version PEFT can parse).
inline constexpr const char* kPeftVersion = "0.20.0+peftcpp.0.1.0";

// Folder of adapter `adapter` inside a save directory: `dir` for "default", `dir/<adapter>` otherwise.
std::string adapter_subdir(const std::string& dir, const std::string& adapter);

// Checks that `dir` holds a loadable adapter; throws FormatError naming what is missing (with a hint when a
// pickle adapter_model.bin is found instead of safetensors).
void check_adapter_dir(const std::string& dir);

// PEFT's PiSSA / OLoRA / CorDA / LoRA-GA -> LoRA conversion on save (save_pretrained(...,
// path_initial_model_for_weight_conversion), §3.13 of the semantics): with A0, B0 from the initial adapter folder
// `initial_dir`, every lora_A becomes [A; A0] (rows) and every lora_B [B, -B0] (columns), so that
// s B' A' = s (B A - B0 A0) is the update relative to the ORIGINAL base. Every other key is dropped (PEFT does the
// same: modules_to_save, embedding LoRA and DoRA magnitudes are lost). The config gets r and lora_alpha doubled
// (alpha * sqrt(2) with rsLoRA), rank_pattern / alpha_pattern values doubled and init_lora_weights = true. The
// initial folder's adapter_config.json is rewritten with init_lora_weights = true, as PEFT does.
void convert_mutated_init_to_lora(LoraConfig& config, std::vector<std::pair<std::string, at::Tensor>>& state,
                                  const std::string& initial_dir);

// PEFT warns when an adapter whose init mutates the base weights (PiSSA, OLoRA, CorDA, LoRA-GA) is loaded:
// applied to the original base it does not reproduce the trained model.
void warn_if_mutating_init(const LoraConfig& config, const std::string& dir);

}  // namespace peft::io
