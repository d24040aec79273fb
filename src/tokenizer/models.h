// tokenizer.json models (HF tokenizers/src/models): BPE and WordPiece turn one pre-tokenized word
// into ids.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "json_util.h"

namespace peft::detail::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>>;

// A model's vocabulary, both ways.
struct Vocab {
  TokenMap by_token;
  std::unordered_map<int64_t, std::string> by_id;

  std::optional<int64_t> find(std::string_view token) const;
};
// Reads {"token": id, ...}.
Vocab read_vocab(const json& spec, const Where& where);

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of `word` to `out`.
  virtual void tokenize(std::string_view word, std::vector<int64_t>& out) const = 0;
  const Vocab& vocab() const { return vocab_; }

 protected:
  explicit Model(Vocab vocab) : vocab_(std::move(vocab)) {}
  Vocab vocab_;
};

// The "model" object. Unknown types throw UnsupportedError.
std::unique_ptr<Model> make_model(const json& spec, const Where& where);
std::unique_ptr<Model> make_bpe(const json& spec, const Where& where);
std::unique_ptr<Model> make_wordpiece(const json& spec, const Where& where);

}  // namespace peft::detail::tok
