// Python str semantics over UTF-8 for chat templates: code-point indexing, str.isspace() stripping
// and Unicode case mapping (lowercase from the tokenizer's Unicode tables; uppercase is its
// inverse).
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "chat_template_ast.h"
#include "unicode.h"

namespace peft::detail::jinja {
namespace {

// Decodes the code point at s[i] (a stray byte reads as itself) and advances i.
uint32_t next_cp(const std::string& s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 1;
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b;
  }
  uint32_t cp = b & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return cp;
}

bool is_py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_ascii(const std::string& s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

std::string lower_char(const std::string& ch) {
  if (ch.size() == 1) {
    const char c = ch[0];
    return std::string(1, c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  if (tok::find_invalid_utf8(ch) != std::string::npos) return ch;
  return tok::lowercase(ch);
}

// Uppercase as the inverse of the single-character lowercase mapping (lowest code point wins, so
// 'k' maps to 'K', not to the Kelvin sign). Misses the few expanding cases such as 'ß' -> "SS".
std::string upper_char(const std::string& ch) {
  if (ch.size() == 1) {
    const char c = ch[0];
    return std::string(1, c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c);
  }
  static std::unordered_map<uint32_t, uint32_t> upper;
  static std::once_flag built;
  std::call_once(built, [] {
    for (char32_t cp = 0x80; cp < 0x20000; ++cp) {
      if (cp >= 0xD800 && cp < 0xE000) continue;
      std::string s;
      tok::append_utf8(s, cp);
      const std::string low = tok::lowercase(s);
      size_t i = 0;
      const uint32_t l = next_cp(low, i);
      if (i == low.size() && l != cp && !upper.count(l)) upper[l] = static_cast<uint32_t>(cp);
    }
  });
  size_t i = 0;
  const uint32_t cp = next_cp(ch, i);
  const auto it = upper.find(cp);
  if (it == upper.end()) return ch;
  std::string out;
  tok::append_utf8(out, static_cast<char32_t>(it->second));
  return out;
}

bool is_cased(const std::string& ch) { return lower_char(ch) != ch || upper_char(ch) != ch; }

}  // namespace

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    next_cp(s, i);
    out.push_back(s.substr(start, i - start));
  }
  return out;
}

std::string py_strip(const std::string& s, bool left, bool right, const std::string* chars) {
  std::vector<uint32_t> set;
  if (chars) {
    for (size_t i = 0; i < chars->size();) set.push_back(next_cp(*chars, i));
  }
  auto strip_cp = [&](uint32_t cp) {
    if (!chars) return is_py_space(cp);
    for (uint32_t c : set) {
      if (c == cp) return true;
    }
    return false;
  };
  std::vector<size_t>
      starts;  // byte offset of each code point, so multi-byte characters stay whole
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) {
    starts.push_back(i);
    cps.push_back(next_cp(s, i));
  }
  size_t b = 0;
  size_t e = cps.size();
  while (left && b < e && strip_cp(cps[b])) ++b;
  while (right && e > b && strip_cp(cps[e - 1])) --e;
  const size_t from = b < starts.size() ? starts[b] : s.size();
  const size_t to = e < starts.size() ? starts[e] : s.size();
  return s.substr(from, to - from);
}

std::string py_lower(const std::string& s) {
  std::string out;
  for (const auto& ch : utf8_chars(s)) out += lower_char(ch);
  return out;
}

std::string py_upper(const std::string& s) {
  if (is_ascii(s)) {
    std::string out = s;
    for (char& c : out) c = upper_char(std::string(1, c))[0];
    return out;
  }
  std::string out;
  for (const auto& ch : utf8_chars(s)) out += upper_char(ch);
  return out;
}

std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (const auto& ch : utf8_chars(s)) {
    const bool cased = is_cased(ch);
    out += cased ? (prev_cased ? lower_char(ch) : upper_char(ch)) : ch;
    prev_cased = cased;
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  const auto chars = utf8_chars(s);
  std::string out;
  for (size_t i = 0; i < chars.size(); ++i)
    out += i == 0 ? upper_char(chars[i]) : lower_char(chars[i]);
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count) {
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  if (from.empty()) return s;  // Python inserts `to` between characters; no template relies on it
  while (count < 0 || done < count) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out += s.substr(pos, hit - pos) + to;
    pos = hit + from.size();
    ++done;
  }
  return out + s.substr(pos);
}

Json py_split(const std::string& s, const Value& sep_v, int64_t maxsplit) {
  Json out = Json::array();
  if (sep_v.is_data() && sep_v.json().is_string()) {
    const std::string& sep = sep_v.json().get_ref<const std::string&>();
    size_t pos = 0;
    for (size_t hit;
         !sep.empty() && (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) &&
         (hit = s.find(sep, pos)) != std::string::npos;
         pos = hit + sep.size()) {
      out.push_back(s.substr(pos, hit - pos));
    }
    out.push_back(s.substr(pos));
    return out;
  }
  // No separator: runs of whitespace split, and leading/trailing whitespace yields nothing.
  std::string rest = py_strip(s, true, false);
  while (!rest.empty()) {
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
      out.push_back(rest);
      break;
    }
    size_t end = 0;
    const auto chars = utf8_chars(rest);
    std::string word;
    for (const auto& ch : chars) {
      if (py_strip(ch, true, true).empty()) break;
      word += ch;
      end += ch.size();
    }
    out.push_back(word);
    rest = py_strip(rest.substr(end), true, false);
  }
  return out;
}

bool py_is_lower(const std::string& s) { return py_lower(s) == s && py_upper(s) != s; }
bool py_is_upper(const std::string& s) { return py_upper(s) == s && py_lower(s) != s; }

}  // namespace peft::detail::jinja
