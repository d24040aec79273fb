// A compiled pcre2_code is read-only during matching, so one Regex serves many threads; each
// search allocates its own match data. JIT is used when PCRE2 was built with it.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pcre_regex.h"

#include <pcre2.h>

#include <new>
#include <stdexcept>

#include "unicode.h"

namespace peft::detail::tok {

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {

std::string message(int error_code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  if (n < 0) return "PCRE2 error " + std::to_string(error_code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

struct MatchData {
  explicit MatchData(const pcre2_code* code)
      : data(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (data == nullptr) throw std::bad_alloc();
  }
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* data;
};

// Returns false on no match; throws on matching errors (match limit, ...).
bool match_at(const pcre2_code* code, std::string_view subject, size_t start, uint32_t options,
              MatchData& md, size_t& begin, size_t& end) {
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(),
                             start, options | PCRE2_NO_UTF_CHECK, md.data, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) throw std::runtime_error("regex match failed: " + message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.data);
  begin = ov[0];
  end = ov[1];
  return true;
}

}  // namespace

Regex::Regex(const std::string& pattern, bool literal) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2_LITERAL admits no PCRE2_UCP (nothing to classify in a literal).
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    throw std::invalid_argument(message(error_code) + " at offset " + std::to_string(error_offset));
  }
  auto holder = std::make_shared<Code>();
  holder->code = code;
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; interpretation is the fallback
  code_ = std::move(holder);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> out;
  MatchData md(code_->code);
  size_t start = 0, begin = 0, end = 0;
  while (start <= subject.size() && match_at(code_->code, subject, start, 0, md, begin, end)) {
    out.emplace_back(begin, end);
    start = end;
    if (begin != end) continue;
    // Empty match: look for a non-empty match at the same place before moving one character on.
    if (end < subject.size() && match_at(code_->code, subject, end,
                                         PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED, md, begin, end)) {
      out.emplace_back(begin, end);
      start = end;
      continue;
    }
    if (start >= subject.size()) break;
    start += utf8_length(static_cast<unsigned char>(subject[start]));
  }
  return out;
}

bool Regex::search(std::string_view subject) const {
  MatchData md(code_->code);
  size_t begin = 0, end = 0;
  return match_at(code_->code, subject, 0, 0, md, begin, end);
}

}  // namespace peft::detail::tok
