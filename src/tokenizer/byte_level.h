// GPT-2's byte-level alphabet (bytes_to_unicode): every byte maps to a printable character, so a
// byte-level BPE vocabulary spells arbitrary bytes as text.
#pragma once

#include <string>
#include <string_view>

namespace peft::detail::tok {

// GPT-2's pre-tokenization regex (HF ByteLevel with use_regex).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Each byte of `bytes` as its byte-level character (UTF-8).
std::string bytes_to_chars(std::string_view bytes);
// The bytes spelled by byte-level characters; false when `text` has a character outside the
// alphabet (HF then keeps such a token's own UTF-8 bytes).
bool chars_to_bytes(std::string_view text, std::string& bytes);

}  // namespace peft::detail::tok
