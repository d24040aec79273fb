// HF's AddedVocabulary: added tokens (special or not) are found in the raw text before the
// normalizer runs (normalized=false tokens) or in each normalized piece (normalized=true), with
// leftmost-longest matching and the lstrip / rstrip / single_word options.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "normalizers.h"
#include "split.h"

namespace peft::detail::tok {

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) rewrites the content of normalized tokens as HF does.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `text` into added tokens (with ids) and normalized text pieces.
  Pieces extract_and_normalize(const Normalizer* normalizer, const std::string& text) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_id(int64_t id) const;
  const AddedToken* find_content(const std::string& content) const;

 private:
  // Patterns of one matching pass, indexed by first byte, longest first.
  struct Patterns {
    std::vector<std::pair<std::string, size_t>> by_byte[256];  // (pattern, token index)
    bool empty = true;
  };
  void add_pattern(Patterns& set, std::string pattern, size_t token);
  void split(const Piece& piece, const Patterns& set, Pieces& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Patterns raw_, normalized_;
};

}  // namespace peft::detail::tok
