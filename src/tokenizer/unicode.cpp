// Unicode tables are parsed once from the generated text tables into sorted vectors and hash maps;
// function-local statics make the first use thread-safe and later reads lock-free.
#include "unicode.h"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace peft::detail::tok {
namespace unicode_data {
extern const char* const kDecompositions[];
extern const char* const kCombiningClass[];
extern const char* const kLowercase[];
extern const char* const kMarkNonspacing[];
extern const char* const kPunctuation[];
extern const char* const kOther[];
extern const char* const kNumeric[];
}  // namespace unicode_data

namespace {

// Splits the ';'-separated entries of a generated table.
template <typename Fn>
void for_each_entry(const char* const* lines, Fn&& fn) {
  for (; *lines != nullptr; ++lines) {
    std::string_view line(*lines);
    size_t start = 0;
    while (start < line.size()) {
      const size_t end = line.find(';', start);
      fn(line.substr(start, end - start));
      start = end + 1;
    }
  }
}

char32_t parse_hex(std::string_view s, size_t& pos) {
  char32_t v = 0;
  while (pos < s.size()) {
    const char c = s[pos];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) break;
    v = v * 16 + static_cast<char32_t>(digit);
    ++pos;
  }
  return v;
}

struct Range {
  char32_t first, last;
  uint32_t value;
};

std::vector<Range> parse_ranges(const char* const* lines) {
  std::vector<Range> out;
  for_each_entry(lines, [&](std::string_view e) {
    size_t pos = 0;
    Range r{};
    r.first = parse_hex(e, pos);
    r.last = r.first;
    if (pos < e.size() && e[pos] == '-') r.last = parse_hex(e, ++pos);
    r.value = 1;
    if (pos < e.size() && e[pos] == ':') r.value = parse_hex(e, ++pos);
    out.push_back(r);
  });
  return out;
}

uint32_t range_lookup(const std::vector<Range>& ranges, char32_t c) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), c,
                             [](char32_t v, const Range& r) { return v < r.first; });
  if (it == ranges.begin()) return 0;
  --it;
  return c <= it->last ? it->value : 0;
}

const std::vector<Range>& mn_ranges() {
  static const std::vector<Range> r = parse_ranges(unicode_data::kMarkNonspacing);
  return r;
}
const std::vector<Range>& p_ranges() {
  static const std::vector<Range> r = parse_ranges(unicode_data::kPunctuation);
  return r;
}
const std::vector<Range>& c_ranges() {
  static const std::vector<Range> r = parse_ranges(unicode_data::kOther);
  return r;
}
const std::vector<Range>& n_ranges() {
  static const std::vector<Range> r = parse_ranges(unicode_data::kNumeric);
  return r;
}
const std::vector<Range>& ccc_ranges() {
  static const std::vector<Range> r = parse_ranges(unicode_data::kCombiningClass);
  return r;
}

using Mapping = std::unordered_map<char32_t, std::u32string>;

Mapping parse_mapping(const char* const* lines) {
  Mapping out;
  for_each_entry(lines, [&](std::string_view e) {
    size_t pos = 0;
    const char32_t cp = parse_hex(e, pos);
    std::u32string to;
    while (pos < e.size()) to.push_back(parse_hex(e, ++pos));  // skips ':' or ','
    out.emplace(cp, std::move(to));
  });
  return out;
}

struct Decompositions {
  Mapping canonical;                               // one level, canonical
  Mapping compatibility;                           // one level, compatibility only
  std::unordered_map<uint64_t, char32_t> compose;  // (first << 32 | second) -> primary composite
};

const Decompositions& decompositions() {
  static const Decompositions d = [] {
    Decompositions out;
    for_each_entry(unicode_data::kDecompositions, [&](std::string_view e) {
      size_t pos = 0;
      const char32_t cp = parse_hex(e, pos);
      const char kind = e[pos];
      std::u32string to;
      while (pos < e.size()) to.push_back(parse_hex(e, ++pos));
      if (kind == '=' && to.size() == 2) {
        out.compose.emplace(static_cast<uint64_t>(to[0]) << 32 | to[1], cp);
      }
      (kind == '>' ? out.compatibility : out.canonical).emplace(cp, std::move(to));
    });
    return out;
  }();
  return d;
}

const Mapping& lowercase_map() {
  static const Mapping m = parse_mapping(unicode_data::kLowercase);
  return m;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose_into(char32_t c, bool compat, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {  // Hangul syllables decompose algorithmically
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decompositions& d = decompositions();
  auto it = d.canonical.find(c);
  if (it == d.canonical.end() && compat) {
    it = d.compatibility.find(c);
    if (it == d.compatibility.end()) it = d.canonical.end();
  }
  if (it == d.canonical.end()) {
    out.push_back(c);
    return;
  }
  for (char32_t part : it->second) decompose_into(part, compat, out);
}

uint32_t combining_class(char32_t c) { return range_lookup(ccc_ranges(), c); }

// Canonical ordering: a stable sort of each run of non-starters by combining class.
void canonical_order(std::u32string& s) {
  size_t i = 0;
  while (i < s.size()) {
    if (combining_class(s[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && combining_class(s[j]) != 0) ++j;
    std::stable_sort(
        s.begin() + static_cast<std::ptrdiff_t>(i), s.begin() + static_cast<std::ptrdiff_t>(j),
        [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
}

char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto& table = decompositions().compose;
  auto it = table.find(static_cast<uint64_t>(a) << 32 | b);
  return it == table.end() ? 0 : it->second;
}

// The canonical composition algorithm of UAX #15.
void compose(std::u32string& s) {
  if (s.empty()) return;
  size_t starter = std::u32string::npos;
  uint32_t last_class = 0;
  size_t out = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    const uint32_t cc = combining_class(c);
    if (starter != std::u32string::npos &&
        (last_class < cc || (last_class == 0 && out == starter + 1))) {
      const char32_t composite = compose_pair(s[starter], c);
      if (composite != 0) {
        s[starter] = composite;
        continue;
      }
    }
    if (cc == 0) {
      starter = out;
      last_class = 0;
    } else {
      last_class = cc;
    }
    s[out++] = c;
  }
  s.resize(out);
}

}  // namespace

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

char32_t next_codepoint(std::string_view s, size_t& pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const size_t len = std::min(utf8_length(lead), s.size() - pos);
  char32_t cp = len == 1 ? lead : lead & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  pos += len;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) out.push_back(next_codepoint(s, pos));
  return out;
}

std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

namespace {
// Length of the valid UTF-8 sequence at `pos`, or 0 with `bad` = length of the maximal invalid
// subpart (the unit one U+FFFD replaces, as in Rust and the Unicode standard).
size_t valid_sequence(std::string_view s, size_t pos, size_t& bad) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  bad = 1;
  if (b0 < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF)
    len = 2;
  else if (b0 == 0xE0)
    len = 3, lo = 0xA0;
  else if (b0 >= 0xE1 && b0 <= 0xEC)
    len = 3;
  else if (b0 == 0xED)
    len = 3, hi = 0x9F;
  else if (b0 >= 0xEE && b0 <= 0xEF)
    len = 3;
  else if (b0 == 0xF0)
    len = 4, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3)
    len = 4;
  else if (b0 == 0xF4)
    len = 4, hi = 0x8F;
  else
    return 0;
  for (size_t k = 1; k < len; ++k) {
    if (pos + k >= s.size()) return 0;
    const auto b = static_cast<unsigned char>(s[pos + k]);
    const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (b < min || b > max) return 0;
    bad = k + 1;
  }
  return len;
}
}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t pos = 0, bad = 0;
  while (pos < s.size()) {
    const size_t len = valid_sequence(s, pos, bad);
    if (len == 0) return pos;
    pos += len;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0, bad = 0;
  while (pos < bytes.size()) {
    const size_t len = valid_sequence(bytes, pos, bad);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      pos += bad;
    } else {
      out.append(bytes.substr(pos, len));
      pos += len;
    }
  }
  return out;
}

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}
bool is_other(char32_t c) { return range_lookup(c_ranges(), c) != 0; }
bool is_mark_nonspacing(char32_t c) { return range_lookup(mn_ranges(), c) != 0; }
bool is_punctuation(char32_t c) { return range_lookup(p_ranges(), c) != 0; }
bool is_numeric(char32_t c) { return range_lookup(n_ranges(), c) != 0; }
bool is_bert_punctuation(char32_t c) {
  const bool ascii_punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
                           (c >= 123 && c <= 126);
  return ascii_punct || is_punctuation(c);
}
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

std::string lowercase(std::string_view s) {
  const Mapping& map = lowercase_map();
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    const char32_t c = next_codepoint(s, pos);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
      continue;
    }
    auto it = map.find(c);
    if (it == map.end()) {
      append_utf8(out, c);
    } else {
      for (char32_t l : it->second) append_utf8(out, l);
    }
  }
  return out;
}

std::string normalize(std::string_view s, NormalForm form) {
  const bool compat = form == NormalForm::kNfkc || form == NormalForm::kNfkd;
  std::u32string decomposed;
  decomposed.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) decompose_into(next_codepoint(s, pos), compat, decomposed);
  canonical_order(decomposed);
  if (form == NormalForm::kNfc || form == NormalForm::kNfkc) compose(decomposed);
  return to_utf8(decomposed);
}

}  // namespace peft::detail::tok
