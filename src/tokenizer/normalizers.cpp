// Normalizers work on whole strings: peft.cpp returns ids only, so HF's alignment bookkeeping
// (NormalizedString offsets) is not needed beyond the pieces' at_start flag.
#include "normalizers.h"

#include <stdexcept>
#include <utility>
#include <vector>

#include "byte_level.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  std::string normalize(std::string text) const override {
    for (const auto& p : parts_) text = p->normalize(std::move(text));
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  std::string normalize(std::string text) const override { return tok::normalize(text, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  std::string normalize(std::string text) const override { return lowercase(text); }
};

// Removes characters for which `drop` holds.
template <typename Pred>
std::string filter(std::string_view text, Pred&& drop) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t begin = pos;
    if (!drop(next_codepoint(text, pos))) out.append(text.substr(begin, pos - begin));
  }
  return out;
}

class StripAccentsNormalizer : public Normalizer {
 public:
  std::string normalize(std::string text) const override {
    return filter(text, is_mark_nonspacing);
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string text) const override {
    const std::u32string chars = to_u32(text);
    size_t begin = 0, end = chars.size();
    if (left_) {
      while (begin < end && is_whitespace(chars[begin])) ++begin;
    }
    if (right_) {
      while (end > begin && is_whitespace(chars[end - 1])) --end;
    }
    return to_utf8(std::u32string_view(chars).substr(begin, end - begin));
  }

 private:
  bool left_, right_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  explicit ReplaceNormalizer(Replacement r) : replacement_(std::move(r)) {}
  std::string normalize(std::string text) const override { return replacement_.apply(text); }

 private:
  Replacement replacement_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize(std::string text) const override {
    return text.empty() ? text : prefix_ + text;  // HF prepends to non-empty strings only
  }

 private:
  std::string prefix_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  std::string normalize(std::string text) const override { return bytes_to_chars(text); }
};

// HF BertNormalizer: clean_text, handle_chinese_chars, strip_accents (default: = lowercase),
// lowercase, in that order.
class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese, bool strip_accents, bool lower)
      : clean_text_(clean_text), chinese_(chinese), strip_accents_(strip_accents), lower_(lower) {}

  std::string normalize(std::string text) const override {
    if (clean_text_ || chinese_) {
      std::string out;
      out.reserve(text.size());
      size_t pos = 0;
      while (pos < text.size()) {
        const char32_t c = next_codepoint(text, pos);
        if (clean_text_) {
          const bool control = c != '\t' && c != '\n' && c != '\r' && is_other(c);
          if (c == 0 || c == 0xFFFD || control) continue;
          if (is_whitespace(c)) {
            out.push_back(' ');
            continue;
          }
        }
        if (chinese_ && is_chinese_char(c)) {
          out.push_back(' ');
          append_utf8(out, c);
          out.push_back(' ');
          continue;
        }
        append_utf8(out, c);
      }
      text = std::move(out);
    }
    if (strip_accents_) text = filter(tok::normalize(text, NormalForm::kNfd), is_mark_nonspacing);
    if (lower_) text = lowercase(text);
    return text;
  }

 private:
  bool clean_text_, chinese_, strip_accents_, lower_;
};

}  // namespace

Regex make_pattern(const json& pattern, const Where& where) {
  if (!pattern.is_object() || pattern.size() != 1 ||
      (!pattern.contains("String") && !pattern.contains("Regex"))) {
    format_error(where,
                 "is " + pattern.dump() + "; expected {\"String\": ...} or {\"Regex\": ...}");
  }
  const bool literal = pattern.contains("String");
  const std::string text = get_string(pattern, literal ? "String" : "Regex", where);
  try {
    return Regex(text, literal);
  } catch (const std::invalid_argument& e) {
    format_error(where, "regex \"" + text + "\" does not compile: " + e.what());
  }
}

Replacement::Replacement(const json& spec, const Where& where)
    : regex_(make_pattern(field(spec, "pattern", where), where / "pattern")),
      content_(get_string(spec, "content", where)) {}

std::string Replacement::apply(std::string_view text) const {
  std::string out;
  size_t prev = 0;
  for (const auto& [begin, end] : regex_.find_all(text)) {
    out.append(text.substr(prev, begin - prev));
    out += content_;
    prev = end;
  }
  out.append(text.substr(prev));
  return out;
}

std::unique_ptr<Normalizer> make_normalizer(const json& spec, const Where& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = get_type(spec, where);
  if (type == "Sequence") {
    const json& list = field(spec, "normalizers", where);
    if (!list.is_array()) format_error(where / "normalizers", "expected an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = make_normalizer(list[i], (where / "normalizers").at(i));
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkd);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(get_bool(spec, "strip_left", where, true),
                                             get_bool(spec, "strip_right", where, true));
  }
  if (type == "Replace") return std::make_unique<ReplaceNormalizer>(Replacement(spec, where));
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(get_string(spec, "prepend", where));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "BertNormalizer") {
    const bool lower = get_bool(spec, "lowercase", where, true);
    const json* strip = spec.contains("strip_accents") ? &spec["strip_accents"] : nullptr;
    bool strip_accents = lower;
    if (strip != nullptr && !strip->is_null())
      strip_accents = get_bool(spec, "strip_accents", where);
    return std::make_unique<BertNormalizer>(get_bool(spec, "clean_text", where, true),
                                            get_bool(spec, "handle_chinese_chars", where, true),
                                            strip_accents, lower);
  }
  unknown_type(where, "normalizer", type,
               {"Sequence", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip", "StripAccents",
                "Replace", "Prepend", "ByteLevel", "BertNormalizer"});
}

}  // namespace peft::detail::tok
