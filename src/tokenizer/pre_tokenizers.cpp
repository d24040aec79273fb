#include "pre_tokenizers.h"

#include <utility>
#include <vector>

#include "byte_level.h"
#include "normalizers.h"
#include "pcre_regex.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

// Split on a regex or literal, optionally inverted (Split, Whitespace).
class RegexSplit : public PreTokenizer {
 public:
  RegexSplit(Regex regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](const Piece& piece, Pieces& out) {
      auto spans = spans_from_matches(piece.text.size(), regex_.find_all(piece.text));
      if (invert_) invert(spans);
      split_piece(piece, spans, behavior_, out);
    });
  }

 private:
  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// Split on characters (WhitespaceSplit, Punctuation, Digits, CharDelimiterSplit).
class CharSplit : public PreTokenizer {
 public:
  using Pred = bool (*)(char32_t, char32_t);
  CharSplit(Pred pred, char32_t arg, SplitBehavior behavior)
      : pred_(pred), arg_(arg), behavior_(behavior) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](const Piece& piece, Pieces& out) {
      const auto spans =
          spans_from_predicate(piece.text, [&](char32_t c) { return pred_(c, arg_); });
      split_piece(piece, spans, behavior_, out);
    });
  }

 private:
  Pred pred_;
  char32_t arg_;
  SplitBehavior behavior_;
};

bool whitespace_pred(char32_t c, char32_t) { return is_whitespace(c); }
bool punctuation_pred(char32_t c, char32_t) { return is_bert_punctuation(c); }
bool numeric_pred(char32_t c, char32_t) { return is_numeric(c); }
bool equal_pred(char32_t c, char32_t d) { return c == d; }

class BertPreTokenizer : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    whitespace_.pre_tokenize(pieces);
    punctuation_.pre_tokenize(pieces);
  }

 private:
  CharSplit whitespace_{whitespace_pred, 0, SplitBehavior::kRemoved};
  CharSplit punctuation_{punctuation_pred, 0, SplitBehavior::kIsolated};
};

// HF ByteLevel: optional leading space, GPT-2 regex split, then bytes to byte-level characters.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex), regex_(kGpt2Pattern, false) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](const Piece& piece, Pieces& out) {
      Piece p = piece;
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      const size_t first = out.size();
      if (use_regex_) {
        split_piece(p, spans_from_matches(p.text.size(), regex_.find_all(p.text)),
                    SplitBehavior::kIsolated, out);
      } else {
        out.push_back(std::move(p));
      }
      for (size_t i = first; i < out.size(); ++i) out[i].text = bytes_to_chars(out[i].text);
    });
  }

 private:
  bool add_prefix_space_, use_regex_;
  Regex regex_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_(split),
        space_(" ", true),
        replacement_regex_(replacement_, true) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_each(pieces, [&](const Piece& piece, Pieces& out) {
      Piece p = piece;
      std::string replaced;
      size_t prev = 0;
      for (const auto& [begin, end] : space_.find_all(p.text)) {
        replaced.append(p.text, prev, begin - prev);
        replaced += replacement_;
        prev = end;
      }
      replaced.append(p.text, prev);
      p.text = std::move(replaced);
      const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        p.text.insert(0, replacement_);
      }
      if (!split_) {
        out.push_back(std::move(p));
        return;
      }
      std::vector<std::pair<size_t, size_t>> matches;
      for (const auto& m : replacement_regex_.find_all(p.text)) matches.push_back(m);
      split_piece(p, spans_from_matches(p.text.size(), matches), SplitBehavior::kMergedWithNext,
                  out);
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  Regex space_, replacement_regex_;
};

SplitBehavior read_behavior(const json& spec, const Where& where, const char* fallback) {
  const std::string b = get_string(spec, "behavior", where, std::string(fallback));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  format_error(where / "behavior", "is \"" + b +
                                       "\"; expected one of Removed, Isolated, "
                                       "MergedWithPrevious, MergedWithNext, Contiguous");
}

}  // namespace

PrependScheme read_prepend_scheme(const json& spec, const Where& where) {
  // Files written before prepend_scheme existed say add_prefix_space (false means never).
  const std::string s = get_string(spec, "prepend_scheme", where, std::string("always"));
  PrependScheme scheme;
  if (s == "always") {
    scheme = PrependScheme::kAlways;
  } else if (s == "first") {
    scheme = PrependScheme::kFirst;
  } else if (s == "never") {
    scheme = PrependScheme::kNever;
  } else {
    format_error(where / "prepend_scheme", "is \"" + s + "\"; expected always, first or never");
  }
  if (spec.contains("add_prefix_space") && !spec["add_prefix_space"].is_null() &&
      !get_bool(spec, "add_prefix_space", where)) {
    if (scheme != PrependScheme::kNever && spec.contains("prepend_scheme")) {
      format_error(where / "add_prefix_space",
                   "is false but prepend_scheme is \"" + s + "\"; expected them to agree");
    }
    scheme = PrependScheme::kNever;
  }
  return scheme;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec, const Where& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = get_type(spec, where);
  if (type == "Sequence") {
    const json& list = field(spec, "pretokenizers", where);
    if (!list.is_array()) format_error(where / "pretokenizers", "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = make_pre_tokenizer(list[i], (where / "pretokenizers").at(i));
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(get_bool(spec, "add_prefix_space", where, true),
                                                   get_bool(spec, "use_regex", where, true));
  }
  if (type == "Split") {
    return std::make_unique<RegexSplit>(
        make_pattern(field(spec, "pattern", where), where / "pattern"),
        read_behavior(spec, where, "Isolated"), get_bool(spec, "invert", where, false));
  }
  if (type == "Metaspace") {
    return std::make_unique<MetaspacePreTokenizer>(get_char(spec, "replacement", where, "\u2581"),
                                                   read_prepend_scheme(spec, where),
                                                   get_bool(spec, "split", where, true));
  }
  if (type == "Whitespace") {
    // Keeps the matches of \w+|[^\w\s]+ (HF: split on the inverted pattern, Removed).
    return std::make_unique<RegexSplit>(Regex(R"(\w+|[^\w\s]+)", false), SplitBehavior::kRemoved,
                                        true);
  }
  if (type == "WhitespaceSplit") {
    return std::make_unique<CharSplit>(whitespace_pred, 0, SplitBehavior::kRemoved);
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "Punctuation") {
    return std::make_unique<CharSplit>(punctuation_pred, 0, read_behavior(spec, where, "Isolated"));
  }
  if (type == "Digits") {
    const bool individual = get_bool(spec, "individual_digits", where, false);
    return std::make_unique<CharSplit>(
        numeric_pred, 0, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
  }
  if (type == "CharDelimiterSplit") {
    const std::string d = get_char(spec, "delimiter", where);
    size_t pos = 0;
    return std::make_unique<CharSplit>(equal_pred, next_codepoint(d, pos), SplitBehavior::kRemoved);
  }
  unknown_type(where, "pre-tokenizer", type,
               {"Sequence", "ByteLevel", "Split", "Metaspace", "Whitespace", "WhitespaceSplit",
                "BertPreTokenizer", "Punctuation", "Digits", "CharDelimiterSplit"});
}

}  // namespace peft::detail::tok
