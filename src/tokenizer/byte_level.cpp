#include "byte_level.h"

#include <array>
#include <unordered_map>

#include "unicode.h"

namespace peft::detail::tok {
namespace {

struct Alphabet {
  std::array<std::string, 256> to_char;
  std::unordered_map<char32_t, unsigned char> to_byte;
};

// bytes_to_unicode() of GPT-2's encoder.py: printable Latin-1 bytes map to themselves, the others
// to 256, 257, ... in byte order.
const Alphabet& alphabet() {
  static const Alphabet a = [] {
    Alphabet out;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? static_cast<char32_t>(b) : next++;
      append_utf8(out.to_char[static_cast<size_t>(b)], c);
      out.to_byte.emplace(c, static_cast<unsigned char>(b));
    }
    return out;
  }();
  return a;
}

}  // namespace

std::string bytes_to_chars(std::string_view bytes) {
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char b : bytes) out += a.to_char[static_cast<unsigned char>(b)];
  return out;
}

bool chars_to_bytes(std::string_view text, std::string& bytes) {
  const Alphabet& a = alphabet();
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    auto it = a.to_byte.find(next_codepoint(text, pos));
    if (it == a.to_byte.end()) return false;
    out.push_back(static_cast<char>(it->second));
  }
  bytes += out;
  return true;
}

}  // namespace peft::detail::tok
