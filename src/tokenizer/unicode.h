// UTF-8 and the Unicode properties HF tokenizers rely on: Rust's char classes (is_whitespace,
// is_numeric, ...), the per-character lowercase mapping, and the NFC/NFD/NFKC/NFKD forms.
// Private to the tokenizer; tables come from unicode_data_*.cpp (generated).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace peft::detail::tok {

// Decodes the code point at `pos` and advances `pos`; the input must be valid UTF-8.
char32_t next_codepoint(std::string_view s, size_t& pos);
// Byte length of the UTF-8 sequence that starts with `lead` (1 for a stray byte).
size_t utf8_length(unsigned char lead);
void append_utf8(std::string& out, char32_t cp);
std::u32string to_u32(std::string_view s);
std::string to_utf8(std::u32string_view s);

// Index of the first byte of an invalid UTF-8 sequence, or npos when `s` is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Rust char::is_whitespace (the White_Space property).
bool is_whitespace(char32_t c);
// General category C* (Rust's `is_other` from unicode_categories).
bool is_other(char32_t c);
// General category Mn.
bool is_mark_nonspacing(char32_t c);
// General category P*.
bool is_punctuation(char32_t c);
// Rust char::is_numeric (N*).
bool is_numeric(char32_t c);
// BERT's punctuation: ASCII punctuation or P*.
bool is_bert_punctuation(char32_t c);
// BERT's CJK ideograph blocks.
bool is_chinese_char(char32_t c);

// Rust char::to_lowercase, applied to each character (no context, as HF's Lowercase).
std::string lowercase(std::string_view s);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string normalize(std::string_view s, NormalForm form);

}  // namespace peft::detail::tok
