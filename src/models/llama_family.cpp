// The model types of the Llama family at their string edge.
#include "llama_family.h"

#include "../spellings.h"
#include "peft/error.h"

namespace peft::models::detail {
namespace {

using F = LlamaFamily;

constexpr peft::detail::Spellings<LlamaFamily, 6> kModelTypes{{
    {F::kLlama, "llama"},
    {F::kMistral, "mistral"},
    {F::kQwen2, "qwen2"},
    {F::kQwen3, "qwen3"},
    {F::kMixtral, "mixtral"},
    {F::kQwen3Moe, "qwen3_moe"},
}};

constexpr peft::detail::Spellings<LlamaFamily, 6> kClassNames{{
    {F::kLlama, "LlamaForCausalLM"},
    {F::kMistral, "MistralForCausalLM"},
    {F::kQwen2, "Qwen2ForCausalLM"},
    {F::kQwen3, "Qwen3ForCausalLM"},
    {F::kMixtral, "MixtralForCausalLM"},
    {F::kQwen3Moe, "Qwen3MoeForCausalLM"},
}};

}  // namespace

LlamaFamily parse_llama_family(const std::string& model_type) {
  const auto f = peft::detail::find_spelling(kModelTypes, model_type);
  PEFT_CHECK(f.has_value(), UnsupportedError, "config.json",
             "model_type \"" << model_type << "\" is not a Llama-family type; expected one of "
                             << peft::detail::accepted_spellings(kModelTypes));
  return *f;
}

std::string to_string(LlamaFamily family) { return peft::detail::spelling_of(kModelTypes, family); }

std::string class_name(LlamaFamily family) {
  return peft::detail::spelling_of(kClassNames, family);
}

bool is_moe(LlamaFamily family) { return family == F::kMixtral || family == F::kQwen3Moe; }

}  // namespace peft::models::detail
