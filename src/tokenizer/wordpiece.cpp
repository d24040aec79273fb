// HF's WordPiece model (models/wordpiece/mod.rs): greedy longest-match-first; continuation
// pieces carry continuing_subword_prefix ("##"); a word longer than max_input_chars_per_word, or
// with a part no piece covers, becomes unk_token as a whole.
#include "models.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

class WordPiece : public Model {
 public:
  WordPiece(Vocab vocab, int64_t unk, std::string prefix, size_t max_chars)
      : Model(std::move(vocab)), unk_(unk), prefix_(std::move(prefix)), max_chars_(max_chars) {}

  void tokenize(std::string_view word, std::vector<int64_t>& out) const override {
    if (word.empty()) return;
    // Character boundaries, to shrink candidates one character at a time.
    std::vector<size_t> bounds;
    for (size_t pos = 0; pos < word.size();) {
      bounds.push_back(pos);
      next_codepoint(word, pos);
    }
    bounds.push_back(word.size());
    if (bounds.size() - 1 > max_chars_) {
      out.push_back(unk_);
      return;
    }
    std::vector<int64_t> pieces;
    std::string candidate;
    size_t start = 0;  // index into bounds
    while (start + 1 < bounds.size()) {
      size_t end = bounds.size() - 1;
      std::optional<int64_t> found;
      while (end > start) {
        candidate.clear();
        if (start > 0) candidate += prefix_;
        candidate.append(word.substr(bounds[start], bounds[end] - bounds[start]));
        if ((found = vocab_.find(candidate))) break;
        --end;
      }
      if (!found) {
        out.push_back(unk_);
        return;
      }
      pieces.push_back(*found);
      start = end;
    }
    out.insert(out.end(), pieces.begin(), pieces.end());
  }

 private:
  int64_t unk_;
  std::string prefix_;
  size_t max_chars_;
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(const json& spec, const Where& where) {
  Vocab vocab = read_vocab(spec, where);
  const std::string unk_token = get_string(spec, "unk_token", where, std::string("[UNK]"));
  const auto unk = vocab.find(unk_token);
  if (!unk) format_error(where / "unk_token", "\"" + unk_token + "\" is not in the vocabulary");
  const int64_t max_chars = get_int(spec, "max_input_chars_per_word", where, 100);
  if (max_chars < 0) format_error(where / "max_input_chars_per_word", "expected >= 0");
  return std::make_unique<WordPiece>(
      std::move(vocab), *unk,
      get_string(spec, "continuing_subword_prefix", where, std::string("##")),
      static_cast<size_t>(max_chars));
}

}  // namespace peft::detail::tok
