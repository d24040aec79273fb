// Small string helpers for messages (private to the library).
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>
#include <vector>

namespace peft::detail {

// "a, b, c" (with each item wrapped in `quote` when given: 'a', 'b'). Written with appends only:
// GCC 12 raises a false -Wrestrict on `"literal" + std::string` under -O2.
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ",
                        const std::string& quote = "") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += quote;
    out += item;
    out += quote;
  }
  return out;
}

// One problem as it is; several as "N <plural>: 1) a; 2) b" (the message of every "check
// everything, throw once").
inline std::string numbered_list(const std::vector<std::string>& items, const std::string& plural) {
  if (items.size() == 1) return items.front();
  std::string out = std::to_string(items.size()) + " " + plural + ": ";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += "; ";
    out += std::to_string(i + 1);
    out += ") ";
    out += items[i];
  }
  return out;
}

// Python's tuple spelling of a shape: (8, 4096), (4,), ().
inline std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += shape.size() == 1 ? ",)" : ")";
  return out;
}

// Python's repr() of a str: single quotes unless the text has a single quote and no double one;
// backslash, the quote, \n \r \t and other control bytes escaped; bytes >= 0x80 as they are (UTF-8
// prints as itself).
inline std::string python_str_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' || c == quote) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  out += quote;
  return out;
}

}  // namespace peft::detail
