// Python `re` matching through PCRE2: re.fullmatch, re.match and one capture group of re.match.
// PCRE2's default syntax agrees with Python's for everything PEFT's patterns use (module names are
// ASCII; `$` also matches before a final newline in both); fullmatch is PCRE2_ANCHORED |
// PCRE2_ENDANCHORED at match time, which, like Python, backtracks into alternatives until the match
// ends at the end of the subject.
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "pcre2_util.h"
#include "peft/error.h"
#include "peft/targeting.h"

namespace peft {
namespace {

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using CodePtr = std::unique_ptr<pcre2_code, CodeDeleter>;
using MatchDataPtr = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// Compiled patterns live for the whole process: configs hold a handful of patterns that are matched
// against every module name, so compiling once matters and the cache stays small. Entries are never
// erased, so the returned reference stays valid after the lock is released (unordered_map nodes are
// stable), and a compiled pcre2_code is read-only during pcre2_match, so concurrent matching is
// safe.
const pcre2_code& compiled(const std::string& pattern) {
  static std::mutex mutex;
  static std::unordered_map<std::string, CodePtr> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(pattern);
  if (it != cache.end()) return *it->second;
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0,
                                   &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    throw ConfigError(
        "regex", "invalid regular expression '" + pattern +
                     "': " + detail::pcre2_message(error_code) + " at offset " +
                     std::to_string(error_offset) +
                     "; expected a Python `re` pattern (check target_modules, exclude_modules, "
                     "modules_to_save, layers_pattern, rank_pattern and alpha_pattern)");
  }
  return *cache.emplace(pattern, CodePtr(code)).first->second;
}

// Runs one match; returns the match data on success, nullptr on no match.
MatchDataPtr run(const std::string& pattern, const std::string& text, uint32_t options) {
  const pcre2_code& code = compiled(pattern);
  MatchDataPtr data(pcre2_match_data_create_from_pattern(&code, nullptr));
  if (!data) throw Error("regex", "out of memory allocating PCRE2 match data");
  const int rc = pcre2_match(&code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             options, data.get(), detail::limited_match_context());
  if (rc == PCRE2_ERROR_NOMATCH) return nullptr;
  if (rc < 0) {
    // Divergence from PEFT: Python's `re` would backtrack for as long as it takes; PCRE2 stops at
    // kRegexMatchLimit steps (or kRegexHeapLimitKiB of frames), and the config is refused.
    throw ConfigError(
        "regex", "matching '" + pattern + "' against '" + text +
                     "' failed: " + detail::pcre2_message(rc) +
                     (detail::is_pcre2_limit(rc)
                          ? " (more than " + std::to_string(detail::kRegexMatchLimit) +
                                " backtracking steps or " +
                                std::to_string(detail::kRegexHeapLimitKiB / 1024) + " MiB)"
                          : std::string()) +
                     "; expected a pattern that does not backtrack catastrophically (hint: "
                     "simplify nested repetitions such as (a+)+ in target_modules and the other "
                     "patterns)");
  }
  return data;
}

}  // namespace

bool regex_fullmatch(const std::string& pattern, const std::string& text) {
  return run(pattern, text, PCRE2_ANCHORED | PCRE2_ENDANCHORED) != nullptr;
}

bool regex_match(const std::string& pattern, const std::string& text) {
  return run(pattern, text, PCRE2_ANCHORED) != nullptr;
}

std::optional<std::string> regex_match_group(const std::string& pattern, const std::string& text,
                                             int group) {
  MatchDataPtr data = run(pattern, text, PCRE2_ANCHORED);
  if (!data) return std::nullopt;
  const uint32_t pairs = pcre2_get_ovector_count(data.get());
  if (group < 0 || static_cast<uint32_t>(group) >= pairs) {
    throw Error("regex", "pattern '" + pattern + "' has no capture group " + std::to_string(group));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
  const size_t index = 2 * static_cast<size_t>(group);
  // A group that did not take part in the match is None in Python.
  if (ovector[index] == PCRE2_UNSET) return std::nullopt;
  return text.substr(ovector[index], ovector[index + 1] - ovector[index]);
}

}  // namespace peft
