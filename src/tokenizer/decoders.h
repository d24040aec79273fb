// tokenizer.json decoders (HF tokenizers/src/decoders): turn the tokens of an id sequence back
// into text. decode = concatenation of decode_chain.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "json_util.h"

namespace peft::detail::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};

// The "decoder" object (null gives nullptr). Unknown types throw UnsupportedError.
std::unique_ptr<Decoder> make_decoder(const json& spec, const Where& where);

}  // namespace peft::detail::tok
