// PeftModelInfo's defaults (PEFT's "custom" model type) and the lookup on a module.
#include "peft/model_info.h"

#include <torch/nn/module.h>

#include "peft/error.h"

namespace peft {

void PeftModelInfo::replicate_layers(const std::vector<std::pair<int64_t, int64_t>>& /*ranges*/) {
  throw ConfigError(
      "layer_replication",
      "Could not locate the layers attribute in the model (model type \"" + model_type() +
          "\"); layer_replication needs a model with a list of transformer layers (hint: the model "
          "zoo's Llama family, GPT-2 and BERT/RoBERTa support it)");
}

const PeftModelInfo& model_info(const torch::nn::Module& model) {
  static const PeftModelInfo fallback;
  const auto* info = dynamic_cast<const PeftModelInfo*>(&model);
  return info ? *info : fallback;
}

PeftModelInfo& model_info(torch::nn::Module& model) {
  // The defaults hold no state: one shared instance serves every model without an info of its own.
  static PeftModelInfo fallback;
  auto* info = dynamic_cast<PeftModelInfo*>(&model);
  return info ? *info : fallback;
}

}  // namespace peft
