// tokenizer.json post-processors (HF tokenizers/src/processors): add the special tokens around
// the encoded sequence(s) when add_special_tokens is set.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "json_util.h"

namespace peft::detail::tok {

using Ids = std::vector<int64_t>;

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // HF process_encodings: one entry per input sequence (1, or 2 for a pair); the result is
  // concatenated by the caller.
  virtual std::vector<Ids> process(std::vector<Ids> sequences, bool add_special_tokens) const = 0;
};

// The "post_processor" object (null gives nullptr). Unknown types throw UnsupportedError.
std::unique_ptr<PostProcessor> make_post_processor(const json& spec, const Where& where);

// transformers' LlamaTokenizerFast.update_post_processor: "[bos] $A [eos]" and
// "[bos] $A [eos] [bos] $B [eos]", each special token present when given.
std::unique_ptr<PostProcessor> make_bos_eos_processor(std::optional<int64_t> bos,
                                                      std::optional<int64_t> eos);

}  // namespace peft::detail::tok
