// The engines behind peft::Tokenizer: tokenizer.json (HF tokenizers' pipeline) and SentencePiece
// tokenizer.model. Immutable once built, so every const method is safe from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "added_vocabulary.h"

namespace peft::detail::tok {

class Backend {
 public:
  virtual ~Backend() = default;
  // `pair` is null for a single sequence.
  virtual std::vector<int64_t> encode(const std::string& text, const std::string* pair,
                                      bool add_special_tokens) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const = 0;
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  virtual std::optional<std::string> id_to_token(int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
  // Makes add_special_tokens put `bos` before and `eos` after each sequence, as transformers'
  // Llama tokenizers do from add_bos_token / add_eos_token.
  virtual void set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos) = 0;
  // Special ids the model itself defines (SentencePiece's bos_id/eos_id/pad_id), used when no
  // tokenizer_config.json names them.
  virtual std::optional<int64_t> model_bos_id() const { return std::nullopt; }
  virtual std::optional<int64_t> model_eos_id() const { return std::nullopt; }
  virtual std::optional<int64_t> model_pad_id() const { return std::nullopt; }
};

std::unique_ptr<Backend> load_tokenizer_json(const std::string& path);

struct SentencePieceOptions {
  std::vector<AddedToken> added_tokens;     // tokenizer_config.json's added_tokens_decoder
  std::vector<std::string> special_tokens;  // bos/eos/unk/pad/additional strings, split off too
  bool add_bos = true;
  bool add_eos = false;
};
std::unique_ptr<Backend> load_sentencepiece(const std::string& path,
                                            const SentencePieceOptions& options);

// Reads a whole file; throws peft::Error naming it when it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace peft::detail::tok
