// Byte-level BPE training as HF tokenizers' BpeTrainer does it for GPT-2 style tokenizers: split
// text with the GPT-2 regex (ByteLevel pre-tokenizer, add_prefix_space false), map every byte to
// its byte-level character, start from all 256 of them, and repeatedly merge the most frequent
// adjacent pair (ties: the smallest pair of ids) until the vocabulary is full.
#include <map>
#include <stdexcept>
#include <unordered_map>

#include "make_demo.h"

namespace make_demo {
namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100.. in byte order (space -> U+0120 'Ġ', newline -> U+010A 'Ċ').
const std::vector<std::string>& byte_chars() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> out(256);
    auto utf8 = [](unsigned cp) {
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      return s;
    };
    unsigned extra = 0;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      out[b] = utf8(printable ? b : 256 + extra++);
    }
    return out;
  }();
  return table;
}

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
// Non-ASCII bytes count as letters: right for the corpus (ASCII only) and for most words.
bool is_letter(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

// Length of the GPT-2 regex match at `i`:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t match_at(const std::string& t, size_t i) {
  const size_t n = t.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(t[k]); };
  if (t[i] == '\'') {
    for (const char* c : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      if (t.compare(i + 1, std::char_traits<char>::length(c), c) == 0)
        return 1 + std::char_traits<char>::length(c);
    }
  }
  const size_t j = t[i] == ' ' ? i + 1 : i;
  if (j < n) {
    auto run = [&](auto pred) {
      size_t k = j;
      while (k < n && pred(at(k))) ++k;
      return k - i;
    };
    if (is_letter(at(j))) return run(is_letter);
    if (is_digit(at(j))) return run(is_digit);
    if (!is_space(at(j))) {
      return run([](unsigned char c) { return !is_space(c) && !is_letter(c) && !is_digit(c); });
    }
  }
  size_t k = i;
  while (k < n && is_space(at(k))) ++k;
  if (k == n || k - i == 1) return k - i;  // \s+(?!\S) at the end, else \s+ of one character
  return k - i - 1;                        // leave the last space to the next word
}

std::vector<std::string> split_chars(const std::string& byte_level) {
  std::vector<std::string> out;
  for (size_t i = 0; i < byte_level.size();) {
    const size_t len = static_cast<unsigned char>(byte_level[i]) < 0x80 ? 1 : 2;
    out.push_back(byte_level.substr(i, len));
    i += len;
  }
  return out;
}

}  // namespace

std::vector<std::string> byte_level_pieces(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size();) {
    const size_t len = match_at(text, i);
    std::string piece;
    for (size_t k = i; k < i + len; ++k) piece += byte_chars()[static_cast<unsigned char>(text[k])];
    out.push_back(std::move(piece));
    i += len;
  }
  return out;
}

BpeModel train_bpe(const std::vector<std::string>& texts, size_t vocab_size,
                   std::vector<std::string> specials) {
  BpeModel m;
  m.specials = std::move(specials);
  std::unordered_map<std::string, int> id_of;
  auto add_token = [&](const std::string& s) {
    auto [it, inserted] = id_of.emplace(s, static_cast<int>(m.vocab.size()));
    if (inserted) m.vocab.push_back(s);
    return it->second;
  };
  for (const auto& s : m.specials) add_token(s);
  for (const auto& c : byte_chars()) add_token(c);
  if (vocab_size <= m.vocab.size())
    throw std::invalid_argument("train_bpe: vocab_size must exceed specials + 256 bytes");

  std::map<std::string, int64_t> counts;
  for (const auto& t : texts) {
    for (auto& p : byte_level_pieces(t)) ++counts[p];
  }
  struct Word {
    std::vector<int> ids;
    int64_t count;
  };
  std::vector<Word> words;
  for (const auto& [piece, count] : counts) {
    Word w{{}, count};
    for (const auto& c : split_chars(piece)) w.ids.push_back(id_of.at(c));
    words.push_back(std::move(w));
  }

  while (m.vocab.size() < vocab_size) {
    std::map<std::pair<int, int>, int64_t> pairs;
    for (const auto& w : words) {
      for (size_t i = 0; i + 1 < w.ids.size(); ++i) pairs[{w.ids[i], w.ids[i + 1]}] += w.count;
    }
    std::pair<int, int> best{-1, -1};
    int64_t best_count = 1;  // a pair seen once is not worth a token
    for (const auto& [p, c] : pairs) {
      if (c > best_count) best = p, best_count = c;  // map order: ties keep the smallest pair
    }
    if (best.first < 0) break;
    const std::string a = m.vocab[static_cast<size_t>(best.first)];
    const std::string b = m.vocab[static_cast<size_t>(best.second)];
    m.merges.emplace_back(a, b);
    const int merged = add_token(a + b);
    for (auto& w : words) {
      std::vector<int> next;
      next.reserve(w.ids.size());
      for (size_t i = 0; i < w.ids.size(); ++i) {
        if (i + 1 < w.ids.size() && w.ids[i] == best.first && w.ids[i + 1] == best.second) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(w.ids[i]);
        }
      }
      w.ids = std::move(next);
    }
  }
  return m;
}

}  // namespace make_demo
