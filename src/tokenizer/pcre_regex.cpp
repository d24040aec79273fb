// A compiled pcre2_code is read-only during matching, so one Regex serves many threads; each
// search allocates its own match data. JIT is used when PCRE2 was built with it.
#include "pcre_regex.h"

#include <new>
#include <stdexcept>

#include "../pcre2_util.h"
#include "peft/error.h"
#include "unicode.h"

namespace peft::detail::tok {

struct Regex::Code {
  pcre2_code* code = nullptr;
  std::string pattern;  // for error messages
  ~Code() { pcre2_code_free(code); }
};

namespace {

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

// Returns false on no match; a matching error (a limit of pcre2_util.h) is a FormatError naming
// the pattern.
bool match_at(const Regex::Code& c, std::string_view subject, size_t start, uint32_t options,
              MatchData& md, size_t& begin, size_t& end) {
  const int rc =
      pcre2_match(c.code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), start,
                  options | PCRE2_NO_UTF_CHECK, md.data, peft::detail::limited_match_context());
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    const std::string pattern =
        c.pattern.size() > 200 ? c.pattern.substr(0, 200) + "..." : c.pattern;
    throw FormatError(
        "tokenizer",
        "the pattern '" + pattern + "' failed on a text of " + std::to_string(subject.size()) +
            " bytes: " + peft::detail::pcre2_message(rc) +
            (peft::detail::is_pcre2_limit(rc)
                 ? " (the limit is " + std::to_string(peft::detail::kRegexMatchLimit) +
                       " backtracking steps and " +
                       std::to_string(peft::detail::kRegexHeapLimitKiB / 1024) + " MiB per match)"
                 : std::string()) +
            " (hint: the tokenizer's pre-tokenizer or normalizer pattern backtracks "
            "catastrophically; check tokenizer.json)");
  }
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
    throw std::invalid_argument(detail::pcre2_message(error_code) + " at offset " +
                                std::to_string(error_offset));
  }
  auto holder = std::make_shared<Code>();
  holder->code = code;
  holder->pattern = pattern;
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; interpretation is the fallback
  code_ = std::move(holder);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> out;
  MatchData md(code_->code);
  size_t start = 0, begin = 0, end = 0;
  while (start <= subject.size() && match_at(*code_, subject, start, 0, md, begin, end)) {
    out.emplace_back(begin, end);
    start = end;
    if (begin != end) continue;
    // Empty match: look for a non-empty match at the same place before moving one character on.
    if (end < subject.size() &&
        match_at(*code_, subject, end, PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED, md, begin, end)) {
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
  return match_at(*code_, subject, 0, 0, md, begin, end);
}

}  // namespace peft::detail::tok
