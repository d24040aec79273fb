// PEFT adapter folders: adapter_config.json + adapter_model.safetensors, where each adapter of a
// save goes, and the prefix of PEFT's checkpoint keys. The keys themselves are built by PeftModel
// (src/peft_model/save_load.cpp).
#pragma once

#include <string>

namespace peft::io {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";
inline constexpr const char* kCheckpointPrefix = "base_model.model.";
// Written into adapter_config.json's peft_version (a PEP 440 local version PEFT can parse).
inline constexpr const char* kPeftVersion = "0.20.0+peftcpp.0.1.0";

// Folder of adapter `adapter` inside a save directory: `dir` for "default", `dir/<adapter>`
// otherwise.
std::string adapter_subdir(const std::string& dir, const std::string& adapter);

// Checks that `dir` holds a loadable adapter; throws FormatError naming what is missing (with a
// hint when a pickle adapter_model.bin is found instead of safetensors).
void check_adapter_dir(const std::string& dir);

// `key` without PEFT's "base_model.model." prefix (unchanged when it has none).
std::string strip_checkpoint_prefix(const std::string& key);

}  // namespace peft::io
