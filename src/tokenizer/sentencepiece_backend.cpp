// tokenizer.model as transformers' slow Llama-family tokenizers use it: added and special tokens
// are split off first, each text piece is encoded on its own (with SentencePiece's dummy "▁"
// prefix, the legacy behaviour), BOS/EOS come from add_bos_token / add_eos_token. Decoding
// follows the decoder HF's converter writes for these models (Replace "▁" by " ", ByteFallback,
// Fuse, Strip one leading space), so both backends of one model decode alike.
#include "backend.h"
#include "peft/error.h"
#include "sentencepiece_model.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

class SentencePieceBackend : public Backend {
 public:
  SentencePieceBackend(const std::string& path, const SentencePieceOptions& options)
      : model_(read_text_file(path), path), added_(with_specials(options), nullptr) {
    if (options.add_bos) {
      bos_ = model_.bos_id();
      if (!bos_) {
        throw FormatError("tokenizer", "\"" + path +
                                           "\": add_bos_token is set but the model has "
                                           "no <s> control piece; expected a BOS piece");
      }
    }
    if (options.add_eos) {
      eos_ = model_.eos_id();
      if (!eos_) {
        throw FormatError("tokenizer", "\"" + path +
                                           "\": add_eos_token is set but the model has "
                                           "no </s> control piece; expected an EOS piece");
      }
    }
    int64_t extra = 0;
    for (const AddedToken& t : added_.tokens()) {
      if (!model_.find(t.content)) ++extra;
    }
    vocab_size_ = static_cast<int64_t>(model_.pieces().size()) + extra;
  }

  std::optional<int64_t> model_bos_id() const override { return model_.bos_id(); }
  std::optional<int64_t> model_eos_id() const override { return model_.eos_id(); }
  std::optional<int64_t> model_pad_id() const override { return model_.pad_id(); }

  std::vector<int64_t> encode(const std::string& text, const std::string* pair,
                              bool add_special_tokens) const override {
    std::vector<int64_t> out;
    auto add = [&](const std::string& s) {
      if (add_special_tokens && bos_) out.push_back(*bos_);
      encode_one(s, out);
      if (add_special_tokens && eos_) out.push_back(*eos_);
    };
    add(text);
    if (pair != nullptr) add(*pair);
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::string out, bytes;
    size_t byte_count = 0;
    auto flush_bytes = [&] {
      if (byte_count == 0) return;
      if (find_invalid_utf8(bytes) == std::string::npos) {
        out += bytes;
      } else {
        for (size_t i = 0; i < byte_count; ++i) out += "\xEF\xBF\xBD";
      }
      bytes.clear();
      byte_count = 0;
    };
    const auto& pieces = model_.pieces();
    for (int64_t id : ids) {
      const AddedToken* added = added_.find_id(id);
      if (added == nullptr && (id < 0 || static_cast<size_t>(id) >= pieces.size())) {
        continue;  // like HF: ids without a token are skipped
      }
      if (added != nullptr) {
        if (skip_special_tokens && added->special) continue;
        flush_bytes();
        out += added->content;
        continue;
      }
      const auto& piece = pieces[static_cast<size_t>(id)];
      using Type = SentencePieceModel::PieceType;
      if (piece.type == Type::kControl || piece.type == Type::kUnknown) {
        if (skip_special_tokens) continue;
      }
      const int b = model_.byte_of(id);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
        ++byte_count;
        continue;
      }
      flush_bytes();
      for (size_t pos = 0; pos < piece.text.size();) {  // "▁" -> " "
        if (piece.text.compare(pos, 3, "\u2581") == 0) {
          out.push_back(' ');
          pos += 3;
        } else {
          out.push_back(piece.text[pos++]);
        }
      }
    }
    flush_bytes();
    if (model_.add_dummy_prefix() && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  std::optional<int64_t> token_to_id(const std::string& token) const override {
    if (const AddedToken* t = added_.find_content(token)) return t->id;
    return model_.find(token);
  }

  std::optional<std::string> id_to_token(int64_t id) const override {
    if (const AddedToken* t = added_.find_id(id)) return t->content;
    if (id < 0 || static_cast<size_t>(id) >= model_.pieces().size()) return std::nullopt;
    return model_.pieces()[static_cast<size_t>(id)].text;
  }

  int64_t vocab_size() const override { return vocab_size_; }

  void set_bos_eos(std::optional<int64_t> bos, std::optional<int64_t> eos) override {
    bos_ = bos;
    eos_ = eos;
  }

 private:
  // added_tokens_decoder plus the special tokens, which transformers also splits off the text.
  std::vector<AddedToken> with_specials(const SentencePieceOptions& options) const {
    std::vector<AddedToken> tokens = options.added_tokens;
    for (const std::string& s : options.special_tokens) {
      bool known = false;
      for (const AddedToken& t : tokens) known = known || t.content == s;
      if (known) continue;
      if (auto id = model_.find(s)) tokens.push_back({s, *id, false, false, false, false, true});
    }
    return tokens;
  }

  void encode_one(const std::string& text, std::vector<int64_t>& out) const {
    const size_t bad = find_invalid_utf8(text);
    if (bad != std::string::npos) {
      throw FormatError("tokenizer", "encode: text is not valid UTF-8 at byte " +
                                         std::to_string(bad) + "; expected UTF-8 text");
    }
    for (const Piece& p : added_.extract_and_normalize(nullptr, text)) {
      if (p.id) {
        out.push_back(*p.id);
      } else {
        model_.encode(p.text, out);
      }
    }
  }

  SentencePieceModel model_;
  AddedVocabulary added_;
  std::optional<int64_t> bos_, eos_;
  int64_t vocab_size_ = 0;
};

}  // namespace

std::unique_ptr<Backend> load_sentencepiece(const std::string& path,
                                            const SentencePieceOptions& options) {
  return std::make_unique<SentencePieceBackend>(path, options);
}

}  // namespace peft::detail::tok
