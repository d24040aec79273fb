// PCRE2 limits and messages shared by the regex users.
#include "pcre2_util.h"

#include <new>

namespace peft::detail {

pcre2_match_context* limited_match_context() {
  static pcre2_match_context* context = [] {
    pcre2_match_context* c = pcre2_match_context_create(nullptr);
    if (c == nullptr) throw std::bad_alloc();
    pcre2_set_match_limit(c, kRegexMatchLimit);
    pcre2_set_heap_limit(c, kRegexHeapLimitKiB);
    return c;
  }();
  return context;
}

std::string pcre2_message(int error_code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  if (n < 0) return "PCRE2 error " + std::to_string(error_code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

bool is_pcre2_limit(int error_code) {
  return error_code == PCRE2_ERROR_MATCHLIMIT || error_code == PCRE2_ERROR_DEPTHLIMIT ||
         error_code == PCRE2_ERROR_HEAPLIMIT || error_code == PCRE2_ERROR_JIT_STACKLIMIT;
}

}  // namespace peft::detail
