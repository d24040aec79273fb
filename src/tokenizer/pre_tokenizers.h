// tokenizer.json pre-tokenizers (HF tokenizers/src/pre_tokenizers): cut each piece of input into
// the words the model tokenizes separately, possibly rewriting them (ByteLevel, Metaspace).
#pragma once

#include <memory>

#include "json_util.h"
#include "split.h"

namespace peft::detail::tok {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece that is not an added token.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

// The "pre_tokenizer" object (null gives nullptr). Unknown types throw UnsupportedError.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec, const Where& where);

// Metaspace's prepend_scheme ("always", "first", "never"), shared with the Metaspace decoder.
enum class PrependScheme { kAlways, kFirst, kNever };
PrependScheme read_prepend_scheme(const json& spec, const Where& where);

}  // namespace peft::detail::tok
