// The regular expressions of tokenizer.json (Oniguruma syntax in HF) through PCRE2, compiled with
// UTF and UCP so that \p{L}, \p{N}, \s and \w are Unicode-aware as in Oniguruma.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peft::detail::tok {

class Regex {
 public:
  // `literal`: match `pattern` as a plain string. Throws std::invalid_argument with PCRE2's
  // message when the pattern does not compile (callers add the file and field).
  Regex(const std::string& pattern, bool literal);

  // Leftmost-first, non-overlapping matches as byte ranges [begin, end), like Oniguruma's and
  // Rust's find_iter (an empty match is retried as non-empty at the same place, then skipped).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;
  bool search(std::string_view subject) const;

  struct Code;  // the compiled pattern (opaque)

 private:
  std::shared_ptr<const Code> code_;
};

}  // namespace peft::detail::tok
