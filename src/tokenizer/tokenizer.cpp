// peft::Tokenizer: picks the backend the way transformers' AutoTokenizer does (tokenizer.json
// first, else tokenizer.model) and applies tokenizer_config.json on top.
#include "peft/tokenizer.h"

#include <filesystem>

#include "backend.h"
#include "peft/error.h"
#include "tokenizer_config.h"

namespace peft {

struct Tokenizer::Impl {
  std::unique_ptr<detail::tok::Backend> backend;
  std::optional<int64_t> bos, eos, pad;
  std::optional<std::string> chat_template;
};

namespace {

namespace fs = std::filesystem;
using detail::tok::Backend;
using detail::tok::TokenizerConfig;

// The id of a configured special token; a token the vocabulary lacks is reported and left unset.
std::optional<int64_t> special_id(const Backend& backend, const std::optional<std::string>& token,
                                  const char* name, const std::string& dir) {
  if (!token) return std::nullopt;
  auto id = backend.token_to_id(*token);
  if (!id) {
    warn("tokenizer", "\"" + dir + "\": " + name + " \"" + *token +
                          "\" is not in the vocabulary; " + name + "_id() is unset");
  }
  return id;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_file(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->backend = detail::tok::load_tokenizer_json(path);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  if (!fs::is_directory(dir)) {
    throw Error("tokenizer", "\"" + dir + "\": not a directory; expected a model directory");
  }
  const TokenizerConfig config = detail::tok::read_tokenizer_config(dir);
  auto impl = std::make_shared<Impl>();
  const fs::path json_path = fs::path(dir) / "tokenizer.json";
  const fs::path model_path = fs::path(dir) / "tokenizer.model";
  if (fs::exists(json_path)) {
    impl->backend = detail::tok::load_tokenizer_json(json_path.string());
  } else if (fs::exists(model_path)) {
    detail::tok::SentencePieceOptions options;
    options.added_tokens = config.added_tokens;
    for (const auto& t : {config.bos_token, config.eos_token, config.unk_token, config.pad_token}) {
      if (t) options.special_tokens.push_back(*t);
    }
    for (const auto& t : config.additional_special_tokens) options.special_tokens.push_back(t);
    options.add_bos = config.add_bos_token.value_or(true);
    options.add_eos = config.add_eos_token.value_or(false);
    if (config.legacy == false) {
      warn("tokenizer", "\"" + dir +
                            "\": legacy=false is not emulated for tokenizer.model; text "
                            "right after a special token may get ids that differ from "
                            "transformers' (hint: a tokenizer.json avoids this)");
    }
    impl->backend = detail::tok::load_sentencepiece(model_path.string(), options);
  } else {
    throw FormatError("tokenizer", "\"" + dir +
                                       "\": has neither tokenizer.json nor tokenizer.model;"
                                       " expected one of them");
  }
  Backend& backend = *impl->backend;
  impl->bos = special_id(backend, config.bos_token, "bos_token", dir);
  impl->eos = special_id(backend, config.eos_token, "eos_token", dir);
  impl->pad = special_id(backend, config.pad_token, "pad_token", dir);
  if (!config.bos_token) impl->bos = backend.model_bos_id();
  if (!config.eos_token) impl->eos = backend.model_eos_id();
  if (!config.pad_token) impl->pad = backend.model_pad_id();
  if (detail::tok::uses_bos_eos_switches(config.tokenizer_class)) {
    const bool add_bos = config.add_bos_token.value_or(true);
    const bool add_eos = config.add_eos_token.value_or(false);
    if ((add_bos && !impl->bos) || (add_eos && !impl->eos)) {
      throw FormatError("tokenizer", "\"" + dir + "\": tokenizer_config.json sets add_" +
                                         (add_bos && !impl->bos ? "bos" : "eos") +
                                         "_token but names no such token in the vocabulary");
    }
    backend.set_bos_eos(add_bos ? impl->bos : std::nullopt, add_eos ? impl->eos : std::nullopt);
  }
  impl->chat_template = config.chat_template;
  return Tokenizer(std::move(impl));
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return impl_->backend->encode(text, nullptr, add_special_tokens);
}

std::vector<int64_t> Tokenizer::encode_pair(const std::string& text, const std::string& text_pair,
                                            bool add_special_tokens) const {
  return impl_->backend->encode(text, &text_pair, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return impl_->backend->decode(ids, skip_special_tokens);
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  return impl_->backend->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int64_t id) const {
  return impl_->backend->id_to_token(id);
}

int64_t Tokenizer::vocab_size() const { return impl_->backend->vocab_size(); }
std::optional<int64_t> Tokenizer::bos_token_id() const { return impl_->bos; }
std::optional<int64_t> Tokenizer::eos_token_id() const { return impl_->eos; }
std::optional<int64_t> Tokenizer::pad_token_id() const { return impl_->pad; }
std::optional<std::string> Tokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace peft
