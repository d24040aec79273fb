// tokenizer.json normalizers (HF tokenizers/src/normalizers): text-to-text rewrites applied to
// each piece of input between added tokens, before pre-tokenization.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "json_util.h"
#include "pcre_regex.h"

namespace peft::detail::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string text) const = 0;
};

// The "normalizer" object (null gives nullptr). Unknown types throw UnsupportedError.
std::unique_ptr<Normalizer> make_normalizer(const json& spec, const Where& where);

// A {"String": s} or {"Regex": r} pattern with its replacement (Replace normalizer and decoder).
class Replacement {
 public:
  Replacement(const json& spec, const Where& where);
  std::string apply(std::string_view text) const;

 private:
  Regex regex_;
  std::string content_;
};

// A {"String": s} or {"Regex": r} pattern of a Split pre-tokenizer or Replace component.
Regex make_pattern(const json& pattern, const Where& where);

}  // namespace peft::detail::tok
