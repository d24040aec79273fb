#include "added_vocabulary.h"

#include <algorithm>

#include "pcre_regex.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

// Rust regex's \w at the edges (single_word): Unicode word characters.
bool is_word_char(char32_t c) {
  static const Regex word(R"(\w)", false);
  std::string s;
  append_utf8(s, c);
  return word.search(s);
}

char32_t last_char(std::string_view s) {
  size_t pos = s.size();
  while (pos > 0 && (static_cast<unsigned char>(s[pos - 1]) & 0xC0) == 0x80) --pos;
  if (pos > 0) --pos;
  return next_codepoint(s, pos);
}

// Byte offset where the trailing whitespace of `s` starts.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t pos = end - 1;
    while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
    size_t p = pos;
    if (!is_whitespace(next_codepoint(s, p))) break;
    end = pos;
  }
  return end;
}

size_t leading_space_end(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!is_whitespace(next_codepoint(s, next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer)
    : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_.emplace(t.id, i);
    by_content_.emplace(t.content, i);
    if (t.content.empty()) continue;
    if (t.normalized) {
      add_pattern(normalized_, normalizer ? normalizer->normalize(t.content) : t.content, i);
    } else {
      add_pattern(raw_, t.content, i);
    }
  }
  for (Patterns* set : {&raw_, &normalized_}) {
    for (auto& list : set->by_byte) {
      std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
        return a.first.size() > b.first.size();
      });
    }
  }
}

void AddedVocabulary::add_pattern(Patterns& set, std::string pattern, size_t token) {
  if (pattern.empty()) return;
  const auto first = static_cast<unsigned char>(pattern[0]);
  set.by_byte[first].emplace_back(std::move(pattern), token);
  set.empty = false;
}

const AddedToken* AddedVocabulary::find_id(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::find_content(const std::string& content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

// HF AddedVocabulary::find_matches + split_with_indices.
void AddedVocabulary::split(const Piece& piece, const Patterns& set, Pieces& out) const {
  const std::string& s = piece.text;
  size_t start_offset = 0, search = 0;
  auto emit_text = [&](size_t begin, size_t end) {
    if (begin < end)
      out.push_back({s.substr(begin, end - begin), piece.at_start && begin == 0, {}});
  };
  while (search < s.size() && !set.empty) {
    // Leftmost-longest match at or after `search`.
    size_t begin = std::string::npos, length = 0, token = 0;
    for (size_t i = search; i < s.size() && begin == std::string::npos; ++i) {
      for (const auto& [pattern, index] : set.by_byte[static_cast<unsigned char>(s[i])]) {
        if (s.compare(i, pattern.size(), pattern) == 0) {
          begin = i;
          length = pattern.size();
          token = index;
          break;
        }
      }
    }
    if (begin == std::string::npos) break;
    size_t end = begin + length;
    search = end;
    const AddedToken& t = tokens_[token];
    if (t.single_word) {
      const bool start_space =
          begin == 0 || !is_word_char(last_char(std::string_view(s).substr(0, begin)));
      size_t p = end;
      const bool stop_space = end == s.size() || !is_word_char(next_codepoint(s, p));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip)
      begin = std::max(trailing_space_start(std::string_view(s).substr(0, begin)), start_offset);
    if (t.rstrip) end += leading_space_end(std::string_view(s).substr(end));
    emit_text(start_offset, begin);
    out.push_back({s.substr(begin, end - begin), piece.at_start && begin == 0, t.id});
    start_offset = end;
    search = std::max(search, end);
  }
  emit_text(start_offset, s.size());
}

Pieces AddedVocabulary::extract_and_normalize(const Normalizer* normalizer,
                                              const std::string& text) const {
  Pieces pieces{{text, true, {}}};
  split_each(pieces, [&](const Piece& p, Pieces& out) { split(p, raw_, out); });
  split_each(pieces, [&](const Piece& p, Pieces& out) {
    Piece normalized{normalizer ? normalizer->normalize(p.text) : p.text, p.at_start, {}};
    split(normalized, normalized_, out);
  });
  return pieces;
}

}  // namespace peft::detail::tok
