// The model types that src/models/llama.cpp builds (config.json's model_type), parsed once when the
// config is read: the family code branches on this enum, never on the string.
#pragma once

#include <string>

namespace peft::models::detail {

enum class LlamaFamily { kLlama, kMistral, kQwen2, kQwen3, kMixtral, kQwen3Moe };

// UnsupportedError listing the family's model types for any other string.
LlamaFamily parse_llama_family(const std::string& model_type);
// config.json's model_type ("qwen3_moe"), also the name used in messages.
std::string to_string(LlamaFamily family);
// transformers' class ("Qwen3MoeForCausalLM").
std::string class_name(LlamaFamily family);
// Mixture-of-experts families (sparse MLP blocks): mixtral, qwen3_moe.
bool is_moe(LlamaFamily family);

}  // namespace peft::models::detail
