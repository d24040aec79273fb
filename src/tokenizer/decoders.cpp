#include "decoders.h"

#include <algorithm>
#include <utility>

#include "byte_level.h"
#include "normalizers.h"
#include "pre_tokenizers.h"
#include "unicode.h"

namespace peft::detail::tok {
namespace {

using Tokens = std::vector<std::string>;

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (const auto& p : parts_) tokens = p->decode_chain(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

// All tokens' byte-level characters back to bytes, then lossy UTF-8 (one string).
class ByteLevelDecoder : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      if (!chars_to_bytes(t, bytes)) bytes += t;
    }
    return {utf8_lossy(bytes)};
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t pos = 0; pos < t.size();) {
        if (t.compare(pos, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && scheme_ != PrependScheme::kNever)) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) t = cleanup(t);
    }
    return tokens;
  }

  // HF decoders::wordpiece::cleanup.
  static std::string cleanup(std::string s) {
    static const std::pair<const char*, const char*> kRules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
        {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : kRules) s = replace_all(s, from, to);
    return s;
  }

  static std::string replace_all(const std::string& s, std::string_view from, std::string_view to) {
    std::string out;
    size_t prev = 0, pos = 0;
    while ((pos = s.find(from, prev)) != std::string::npos) {
      out.append(s, prev, pos - prev);
      out += to;
      prev = pos + from.size();
    }
    out.append(s, prev);
    return out;
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

// Runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte when invalid.
class ByteFallbackDecoder : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    Tokens out;
    std::string bytes;
    size_t count = 0;
    auto flush = [&] {
      if (count == 0) return;
      if (find_invalid_utf8(bytes) == std::string::npos) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < count; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      count = 0;
    };
    for (std::string& t : tokens) {
      int value = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') value = hex_byte(t[3], t[4]);
      if (value >= 0) {
        bytes.push_back(static_cast<char>(value));
        ++count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }

 private:
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int hex_byte(char hi, char lo) {
    const int h = hex_digit(hi), l = hex_digit(lo);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
};

class FuseDecoder : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    return {all};
  }
};

// Strips up to `start` leading and `stop` trailing occurrences of one character per token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (std::string& t : tokens) {
      std::u32string chars = to_u32(t);
      size_t begin = 0;
      while (begin < start_ && begin < chars.size() && chars[begin] == content_) ++begin;
      size_t end = chars.size();
      for (size_t i = 0; i < std::min(stop_, chars.size() - begin) && chars[end - 1] == content_;
           ++i) {
        --end;
      }
      t = to_utf8(std::u32string_view(chars).substr(begin, end - begin));
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  explicit ReplaceDecoder(Replacement r) : replacement_(std::move(r)) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (std::string& t : tokens) t = replacement_.apply(t);
    return tokens;
  }

 private:
  Replacement replacement_;
};

// BPEDecoder: the end-of-word suffix becomes a space (nothing after the last token).
class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] =
          WordPieceDecoder::replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    }
    return tokens;
  }

 private:
  std::string suffix_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& spec, const Where& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = get_type(spec, where);
  if (type == "Sequence") {
    const json& list = field(spec, "decoders", where);
    if (!list.is_array()) format_error(where / "decoders", "expected an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto d = make_decoder(list[i], (where / "decoders").at(i))) parts.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(get_char(spec, "replacement", where, "\u2581"),
                                              read_prepend_scheme(spec, where));
  }
  if (type == "WordPiece") {
    return std::make_unique<WordPieceDecoder>(get_string(spec, "prefix", where, std::string("##")),
                                              get_bool(spec, "cleanup", where, true));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    const std::string content = get_char(spec, "content", where);
    size_t pos = 0;
    const int64_t start = get_int(spec, "start", where, 0), stop = get_int(spec, "stop", where, 0);
    if (start < 0 || stop < 0) format_error(where, "start and stop must be >= 0");
    return std::make_unique<StripDecoder>(next_codepoint(content, pos), static_cast<size_t>(start),
                                          static_cast<size_t>(stop));
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(Replacement(spec, where));
  if (type == "BPEDecoder") {
    return std::make_unique<BpeDecoder>(get_string(spec, "suffix", where, std::string("</w>")));
  }
  unknown_type(where, "decoder", type,
               {"Sequence", "ByteLevel", "Metaspace", "WordPiece", "ByteFallback", "Fuse", "Strip",
                "Replace", "BPEDecoder"});
}

}  // namespace peft::detail::tok
