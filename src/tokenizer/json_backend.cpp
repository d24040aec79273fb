// tokenizer.json, run as HF's TokenizerImpl::encode does: added tokens are split off and the rest
// normalized (AddedVocabulary::extract_and_normalize), pre-tokenized, tokenized by the model, then
// post-processed; decode maps ids to tokens (added tokens first) and runs the decoder.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "backend.h"
#include "decoders.h"
#include "models.h"
#include "normalizers.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "post_processors.h"
#include "pre_tokenizers.h"
#include "unicode.h"

namespace peft::detail::tok {

std::string read_text_file(const std::string& path) { return io::read_file(path, "tokenizer"); }

namespace {

void check_utf8(const std::string& text) {
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos) {
    throw FormatError("tokenizer", "encode: text is not valid UTF-8 at byte " +
                                       std::to_string(bad) + "; expected UTF-8 text");
  }
}

std::vector<AddedToken> read_added_tokens(const json& root, const Where& where) {
  std::vector<AddedToken> out;
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return out;
  const json& list = root["added_tokens"];
  if (!list.is_array()) format_error(where / "added_tokens", "expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const Where w = (where / "added_tokens").at(i);
    AddedToken t;
    t.id = get_int(list[i], "id", w);
    t.content = get_string(list[i], "content", w);
    t.single_word = get_bool(list[i], "single_word", w, false);
    t.lstrip = get_bool(list[i], "lstrip", w, false);
    t.rstrip = get_bool(list[i], "rstrip", w, false);
    t.special = get_bool(list[i], "special", w, false);
    t.normalized = get_bool(list[i], "normalized", w, !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

class JsonBackend : public Backend {
 public:
  JsonBackend(const json& root, const Where& where)
      : normalizer_(make_normalizer(root.value("normalizer", json()), where / "normalizer")),
        pre_tokenizer_(
            make_pre_tokenizer(root.value("pre_tokenizer", json()), where / "pre_tokenizer")),
        model_(make_model(field(root, "model", where), where / "model")),
        post_processor_(
            make_post_processor(root.value("post_processor", json()), where / "post_processor")),
        decoder_(make_decoder(root.value("decoder", json()), where / "decoder")),
        added_(read_added_tokens(root, where), normalizer_.get()) {
    int64_t extra = 0;
    for (const AddedToken& t : added_.tokens()) {
      if (!model_->vocab().find(t.content)) ++extra;
    }
    vocab_size_ = static_cast<int64_t>(model_->vocab().by_token.size()) + extra;
  }

  std::vector<int64_t> encode(const std::string& text, const std::string* pair,
                              bool add_special_tokens) const override {
    std::vector<Ids> sequences{encode_one(text)};
    if (pair != nullptr) sequences.push_back(encode_one(*pair));
    if (post_processor_)
      sequences = post_processor_->process(std::move(sequences), add_special_tokens);
    Ids out;
    for (const Ids& s : sequences) out.insert(out.end(), s.begin(), s.end());
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int64_t id : ids) {
      if (const AddedToken* t = added_.find_id(id)) {
        if (!(skip_special_tokens && t->special)) tokens.push_back(t->content);
        continue;
      }
      auto it = model_->vocab().by_id.find(id);
      if (it == model_->vocab().by_id.end()) continue;  // HF skips ids without a token
      if (skip_special_tokens) {
        const AddedToken* t = added_.find_content(it->second);
        if (t != nullptr && t->special) continue;
      }
      tokens.push_back(it->second);
    }
    if (!decoder_) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    std::string out;
    for (std::string& t : decoder_->decode_chain(std::move(tokens))) out += t;
    return out;
  }

  std::optional<int64_t> token_to_id(const std::string& token) const override {
    if (const AddedToken* t = added_.find_content(token)) return t->id;
    return model_->vocab().find(token);
  }

  std::optional<std::string> id_to_token(int64_t id) const override {
    if (const AddedToken* t = added_.find_id(id)) return t->content;
    auto it = model_->vocab().by_id.find(id);
    if (it == model_->vocab().by_id.end()) return std::nullopt;
    return it->second;
  }

  int64_t vocab_size() const override { return vocab_size_; }

  void set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos) override {
    post_processor_ = make_bos_eos_processor(bos, eos);
  }

 private:
  Ids encode_one(const std::string& text) const {
    check_utf8(text);
    Pieces pieces = added_.extract_and_normalize(normalizer_.get(), text);
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
    Ids ids;
    for (const Piece& p : pieces) {
      if (p.id) {
        ids.push_back(*p.id);
      } else {
        model_->tokenize(p.text, ids);
      }
    }
    return ids;
  }

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  AddedVocabulary added_;
  int64_t vocab_size_ = 0;
};

}  // namespace

std::unique_ptr<Backend> load_tokenizer_json(const std::string& path) {
  const std::string text = read_text_file(path);
  json root;
  try {
    io::check_json_depth(text, "tokenizer", "\"" + path + "\"");
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError("tokenizer", "\"" + path + "\": not valid JSON: " + e.what() +
                                       " (hint: is this a tokenizer.json from Hugging Face?)");
  }
  const Where where{path, ""};
  if (!root.is_object()) format_error(where, "is " + type_name(root) + "; expected an object");
  if (!root.contains("model")) {
    format_error(where / "model",
                 "missing; expected the tokenizer model (is this a tokenizer.json?)");
  }
  return std::make_unique<JsonBackend>(root, where);
}

}  // namespace peft::detail::tok
