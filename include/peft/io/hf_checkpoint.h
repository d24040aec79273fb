// Hugging Face checkpoint folders: reading config.json and (sharded) safetensors weights into a
// module, and writing a module back as a checkpoint folder. Counterpart: transformers'
// from_pretrained / save_pretrained.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace peft::io {

// Reads `dir/config.json` (FormatError naming the file when missing or not JSON).
std::string read_config_json(const std::string& dir);

// Every tensor of the checkpoint in `dir` (model.safetensors, or the shards listed by
// model.safetensors.index.json), zero-copy where possible.
std::map<std::string, at::Tensor> load_checkpoint_tensors(const std::string& dir);

struct CheckpointLoadReport {
  std::vector<std::string> unexpected;  // in the file, not in the module (warned about)
  std::vector<std::string> tied;        // absent but filled from their tied source
};

// Copies checkpoint tensors into `module`'s parameters and buffers by name, converting dtype and
// device. `tied` lists (key, source key) pairs: a missing key is filled from its source. All
// missing and mis-shaped tensors are collected and thrown at once (FormatError for missing,
// ShapeMismatchError for shapes).
CheckpointLoadReport load_state_into(
    torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
    const std::string& source, const std::vector<std::pair<std::string, std::string>>& tied = {});

// Writes `module`'s parameters (minus `skip` keys) as dir/model.safetensors (metadata {"format":
// "pt"}).
void save_checkpoint_tensors(const torch::nn::Module& module, const std::string& dir,
                             const std::vector<std::string>& skip = {},
                             std::optional<c10::ScalarType> dtype = std::nullopt);

}  // namespace peft::io
