// Tokenizers whose token ids equal Hugging Face's for the same text: tokenizer.json (the format of
// HF `tokenizers`: BPE / WordPiece with their normalizers, pre-tokenizers, post-processors and
// decoders) and SentencePiece tokenizer.model, with transformers' tokenizer_config.json.
// PEFT counterpart: the AutoTokenizer a PEFT training script loads next to its base model.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace peft {

// Immutable after loading: every method is const and safe to call from several threads at once.
// Copies share the loaded tokenizer.
class Tokenizer {
 public:
  // A tokenizer.json file. Malformed files throw FormatError, components peft.cpp does not
  // implement throw UnsupportedError; both name the file and the JSON path of the component.
  // No tokenizer_config.json is read, so the bos/eos/pad ids and chat template are unset.
  static Tokenizer from_file(const std::string& path);
  // A model directory as transformers' AutoTokenizer reads it: tokenizer.json, else
  // tokenizer.model (SentencePiece BPE with the identity normalizer, as Llama / Mistral / Gemma
  // ship; read by peft.cpp itself, in the legacy mode of transformers' slow tokenizers);
  // tokenizer_config.json for bos/eos/pad tokens, add_bos_token / add_eos_token (Llama-family
  // tokenizer classes) and chat_template; special_tokens_map.json (overrides the config's special
  // tokens, as in transformers); chat_template.jinja when present.
  static Tokenizer from_dir(const std::string& dir);

  // Ids of `text`; add_special_tokens applies the post-processor (BOS, [CLS] ... [SEP], ...).
  // Added tokens in the text (e.g. "<|eot_id|>") are always recognised, as in HF.
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const;
  // A sequence pair ("[CLS] A [SEP] B [SEP]" for BERT), as HF's encode(text, text_pair).
  std::vector<int64_t> encode_pair(const std::string& text, const std::string& text_pair,
                                   bool add_special_tokens = true) const;
  // Text of `ids` through the decoder (HF `tokenizers` decode: no clean_up_tokenization_spaces
  // beyond what the decoder does). Ids without a token are skipped, as HF does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  // Added tokens first, then the model vocabulary.
  std::optional<int64_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  // Distinct tokens: the model vocabulary plus added tokens not in it (HF len(tokenizer)).
  int64_t vocab_size() const;

  std::optional<int64_t> bos_token_id() const;
  std::optional<int64_t> eos_token_id() const;
  std::optional<int64_t> pad_token_id() const;
  // The raw Jinja chat template of tokenizer_config.json (or chat_template.jinja).
  std::optional<std::string> chat_template() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace peft
