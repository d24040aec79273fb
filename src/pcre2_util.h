// PCRE2 as both of its users need it (module-name patterns in src/regex.cpp, tokenizer.json's
// patterns in src/tokenizer/pcre_regex.cpp): one set of limits, so that no pattern from a stranger
// backtracks or allocates without bound, and PCRE2's messages.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <cstdint>
#include <string>

namespace peft::detail {

// Per pcre2_match call: backtracking steps (PCRE2's default, stated here because it is a promise)
// and the memory for backtracking frames (PCRE2's default is 20 GB).
inline constexpr uint32_t kRegexMatchLimit = 10'000'000;
inline constexpr uint32_t kRegexHeapLimitKiB = 256 * 1024;

// A match context with those limits, shared by every match (read-only once made).
pcre2_match_context* limited_match_context();

// PCRE2's text for an error code.
std::string pcre2_message(int error_code);

// True for the errors that mean "a limit stopped this match" (match, depth, heap, JIT stack).
bool is_pcre2_limit(int error_code);

}  // namespace peft::detail
