// Factories of the model families (one .cpp per family), used by the registry in registry.cpp.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>

#include "peft/models/model.h"

namespace peft::models::detail {

// llama, mistral, qwen2, qwen3 (src/models/llama.cpp)
std::shared_ptr<PretrainedModel> make_llama(const nlohmann::json& config);
// gpt2 (src/models/gpt2.cpp)
std::shared_ptr<PretrainedModel> make_gpt2(const nlohmann::json& config);
// bert, roberta (src/models/bert.cpp)
std::shared_ptr<PretrainedModel> make_bert(const nlohmann::json& config);

}  // namespace peft::models::detail
