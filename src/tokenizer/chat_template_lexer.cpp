// Jinja2 lexer for chat templates. Mirrors jinja2.lexer with transformers' environment
// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False): the whitespace rules decide
// every newline of the rendered prompt, so they follow jinja2's regexes case by case.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "chat_template_ast.h"

namespace peft::detail::jinja {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // jinja2: did the previous match end with a newline?
    while (pos < src_.size()) {
      const size_t start = find_tag(pos);
      std::string text =
          src_.substr(pos, start == std::string::npos ? std::string::npos : start - pos);
      if (start == std::string::npos) {
        emit_text(text, pos);
        break;
      }
      const char kind = src_[start + 1];  // '{', '%' or '#'
      const char sign = start + 2 < src_.size() ? src_[start + 2] : '\0';
      if (sign == '-') {
        text = py_strip(text, false, true);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the spaces before a block or comment tag that starts its line.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            py_strip(text.substr(l_pos), true, true).empty()) {
          text.resize(l_pos);
        }
      }
      emit_text(text, pos);
      size_t p = start + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        p = skip_comment(start, p);
      } else if (kind == '%' && is_raw(p)) {
        p = lex_raw(start, p);
      } else {
        p = lex_tag(kind, start, p);
      }
      line_starting = p > 0 && src_[p - 1] == '\n';
      pos = p;
    }
    tokens_.push_back(Token{TokKind::kEof, "", pos_of(src_.size())});
    return std::move(tokens_);
  }

 private:
  SourcePos pos_of(size_t offset) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - 1;
    return SourcePos{static_cast<int>(it - line_starts_.begin()) + 1,
                     static_cast<int>(offset - *it) + 1};
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    }
    return std::string::npos;
  }

  void emit_text(const std::string& text, size_t at) {
    if (!text.empty()) tokens_.push_back(Token{TokKind::kText, text, pos_of(at)});
  }

  // After a block or comment end: '-' strips all following whitespace, '+' nothing, and trim_blocks
  // drops a single newline.
  size_t after_end(size_t p, char sign) const {
    if (sign == '-') {
      while (p < src_.size() && is_space(src_[p])) ++p;
    } else if (sign != '+' && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  size_t skip_comment(size_t start, size_t p) const {
    const size_t end = src_.find("#}", p);
    if (end == std::string::npos) {
      if (p >= src_.size()) return p;  // jinja2 ignores a bare "{#" that ends the template
      fail(pos_of(start), "comment '{#' is never closed; expected '#}'");
    }
    const char sign = end > p ? src_[end - 1] : '\0';
    return after_end(end + 2, sign);
  }

  // {% raw %} ... {% endraw %}: the content is text, not parsed.
  bool is_raw(size_t p) const {
    while (p < src_.size() && is_space(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_name_char(src_[p + 3])))
      return false;
    p += 3;
    while (p < src_.size() && is_space(src_[p])) ++p;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    return src_.compare(p, 2, "%}") == 0;
  }

  size_t lex_raw(size_t start, size_t p) {
    // Unlike other block ends, jinja2's raw-begin rule has no trim_blocks newline: only '-' strips.
    const size_t open_end = src_.find("%}", p);
    size_t body = open_end + 2;
    if (src_[open_end - 1] == '-') {
      while (body < src_.size() && is_space(src_[body])) ++body;
    }
    for (size_t i = src_.find("{%", body); i != std::string::npos; i = src_.find("{%", i + 2)) {
      size_t q = i + 2;
      const char inner_sign = q < src_.size() ? src_[q] : '\0';
      if (inner_sign == '-' || inner_sign == '+') ++q;
      while (q < src_.size() && is_space(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q += 6;
      while (q < src_.size() && is_space(src_[q])) ++q;
      const char close_sign = q < src_.size() ? src_[q] : '\0';
      if (close_sign == '-' || close_sign == '+') ++q;
      if (src_.compare(q, 2, "%}") != 0) continue;
      std::string text = src_.substr(body, i - body);
      if (inner_sign == '-') text = py_strip(text, false, true);
      emit_text(text, body);
      return after_end(q + 2, close_sign);
    }
    fail(pos_of(start), "'{% raw %}' is never closed; expected '{% endraw %}'");
  }

  size_t lex_tag(char kind, size_t start, size_t p) {
    const bool block = kind == '%';
    tokens_.push_back(Token{block ? TokKind::kBlockBegin : TokKind::kVarBegin, "", pos_of(start)});
    std::vector<char> brackets;  // open brackets: an end delimiter only counts when all are closed
    while (true) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (p >= src_.size()) {
        fail(pos_of(start),
             std::string("tag is never closed; expected '") + (block ? "%}" : "}}") + "'");
      }
      if (brackets.empty()) {
        const char* end = block ? "%}" : "}}";
        const char sign = src_[p];
        const size_t signed_len = (sign == '-' || (block && sign == '+')) ? 1 : 0;
        if (src_.compare(p + signed_len, 2, end) == 0) {
          tokens_.push_back(Token{block ? TokKind::kBlockEnd : TokKind::kVarEnd, "", pos_of(p)});
          p += signed_len + 2;
          if (block) return after_end(p, signed_len ? sign : '\0');
          if (sign == '-') {
            while (p < src_.size() && is_space(src_[p])) ++p;
          }
          return p;
        }
      }
      p = lex_token(p, brackets);
    }
  }

  size_t lex_token(size_t p, std::vector<char>& brackets) {
    const SourcePos at = pos_of(p);
    const char c = src_[p];
    if (c == '\'' || c == '"') return lex_string(p);
    if (is_digit(c)) return lex_number(p);
    if (is_name_start(c)) {
      size_t q = p;
      while (q < src_.size() && is_name_char(src_[q])) ++q;
      tokens_.push_back(Token{TokKind::kName, src_.substr(p, q - p), at});
      return q;
    }
    static const char* const kTwoChar[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwoChar) {
      if (src_.compare(p, 2, op) == 0) {
        tokens_.push_back(Token{TokKind::kOp, op, at});
        return p + 2;
      }
    }
    static const std::string kOneChar = "+-*/%~<>=.:|,;()[]{}";
    if (kOneChar.find(c) == std::string::npos) {
      fail(at, std::string("unexpected character '") + c + "'");
    }
    if (c == '(' || c == '[' || c == '{') brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty()) fail(at, std::string("unexpected '") + c + "'");
      if (brackets.back() != c) {
        fail(at, std::string("unexpected '") + c + "'; expected '" + brackets.back() + "'");
      }
      brackets.pop_back();
    }
    tokens_.push_back(Token{TokKind::kOp, std::string(1, c), at});
    return p + 1;
  }

  size_t lex_number(size_t p) {
    const SourcePos at = pos_of(p);
    auto digits = [&](size_t q, std::string& out) {
      while (q < src_.size() && (is_digit(src_[q]) || (src_[q] == '_' && q + 1 < src_.size() &&
                                                       is_digit(src_[q + 1])))) {
        if (src_[q] != '_') out += src_[q];
        ++q;
      }
      return q;
    };
    std::string text;
    size_t q = digits(p, text);
    bool is_float = false;
    if (q + 1 < src_.size() && src_[q] == '.' && is_digit(src_[q + 1])) {
      text += '.';
      q = digits(q + 1, text);
      is_float = true;
    }
    if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t r = q + 1;
      std::string exp = "e";
      if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) exp += src_[r++];
      if (r < src_.size() && is_digit(src_[r])) {
        q = digits(r, exp);
        text += exp;
        is_float = true;
      }
    }
    tokens_.push_back(Token{is_float ? TokKind::kFloat : TokKind::kInt, text, at});
    return q;
  }

  // Python's unicode-escape decoding of the literal body, which is what jinja2 applies.
  size_t lex_string(size_t p) {
    const SourcePos at = pos_of(p);
    const char quote = src_[p];
    std::string out;
    size_t q = p + 1;
    auto hex = [&](size_t n) {
      uint32_t v = 0;
      for (size_t i = 0; i < n; ++i) {
        const char h = q + 2 + i < src_.size() ? src_[q + 2 + i] : '\0';
        const int d = is_digit(h)              ? h - '0'
                      : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                      : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                               : -1;
        if (d < 0) fail(at, "truncated \\x, \\u or \\U escape in string literal");
        v = v * 16 + static_cast<uint32_t>(d);
      }
      q += n;
      return v;
    };
    while (true) {
      if (q >= src_.size()) fail(at, "string literal is never closed");
      const char c = src_[q];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++q;
        continue;
      }
      const char e = q + 1 < src_.size() ? src_[q + 1] : '\0';
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          append_utf8(out, hex(2));
          break;
        case 'u':
          append_utf8(out, hex(4));
          break;
        case 'U':
          append_utf8(out, hex(8));
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = 0;
            size_t n = 0;
            while (n < 3 && q + 1 + n < src_.size() && src_[q + 1 + n] >= '0' &&
                   src_[q + 1 + n] <= '7') {
              v = v * 8 + static_cast<uint32_t>(src_[q + 1 + n] - '0');
              ++n;
            }
            append_utf8(out, v);
            q += n - 1;
          } else {
            out += '\\';  // unknown escapes stay as written
            out += e;
          }
      }
      q += 2;
    }
    tokens_.push_back(Token{TokKind::kString, out, at});
    return q + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;  // offset of each line's first byte
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) {
  // jinja2 splits on \r\n, \r and \n, rejoins with \n and drops one trailing newline.
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src)).run();
}

}  // namespace peft::detail::jinja
