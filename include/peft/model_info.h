// What PEFT reads from a transformers model (its config and module layout), as an interface a model
// class may implement next to torch::nn::Module. The model zoo implements it; plain user models get
// the defaults of PEFT's "custom" model type. PEFT counterparts: model.config.model_type,
// get_input/output_embeddings, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
// tie_word_embeddings.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace peft {

class PeftModelInfo {
 public:
  virtual ~PeftModelInfo() = default;
  virtual std::string model_type() const { return "custom"; }  // config.json model_type
  virtual std::string name_or_path() const { return ""; }      // -> base_model_name_or_path
  virtual std::string class_name() const { return "Custom"; }  // auto_mapping.base_model_class
  virtual std::string parent_library() const { return "__main__"; }
  // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING entry (used when target_modules is
  // None).
  virtual std::vector<std::string> default_target_modules() const { return {}; }
  // get_output_embeddings() (excluded from "all-linear"); empty if none.
  virtual std::string output_embedding_name() const { return ""; }
  // get_input_embeddings() (trainable_token_indices given as a list applies to it). PEFT's fallback
  // for models without one is "embed_tokens".
  virtual std::string input_embedding_name() const { return "embed_tokens"; }
  // True when the output embedding's weight IS the input embedding's (config.tie_word_embeddings).
  virtual bool ties_word_embeddings() const { return false; }
  // layer_replication (PEFT replicate_layers): rebuilds the model's list of transformer layers as
  // the concatenation of the [start, end) ranges; each new entry shares its source layer's
  // parameters and gets its new index. The default throws ConfigError (PEFT: "Could not locate the
  // layers attribute in the model").
  virtual void replicate_layers(const std::vector<std::pair<int64_t, int64_t>>& ranges);
};

// The model's PeftModelInfo, or the defaults (PEFT's "custom" model) when its class does not
// implement it.
const PeftModelInfo& model_info(const torch::nn::Module& model);
PeftModelInfo& model_info(torch::nn::Module& model);

}  // namespace peft
