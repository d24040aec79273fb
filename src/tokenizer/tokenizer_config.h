// transformers' tokenizer_config.json / special_tokens_map.json / chat_template.jinja: the
// special-token strings, BOS/EOS switches and chat template that live beside the tokenizer.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "added_vocabulary.h"

namespace peft::detail::tok {

struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::vector<std::string> additional_special_tokens;
  std::optional<std::string> chat_template;
  std::optional<bool> add_bos_token, add_eos_token, legacy;
  std::string tokenizer_class;
  std::vector<AddedToken> added_tokens;  // added_tokens_decoder
};

// Reads whichever of the files exist in `dir` (none is an empty config).
TokenizerConfig read_tokenizer_config(const std::string& dir);

// transformers' Llama/CodeLlama/Gemma tokenizer classes rebuild the post-processor from
// add_bos_token (default true) and add_eos_token (default false).
bool uses_bos_eos_switches(const std::string& tokenizer_class);

}  // namespace peft::detail::tok
