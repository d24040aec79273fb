// Small string helpers for messages (private to the library).
#pragma once

#include <string>
#include <vector>

namespace peft::detail {

// "a, b, c" (with each item wrapped in `quote` when given: 'a', 'b'). Written with appends only: GCC 12
// raises a false -Wrestrict on `"literal" + std::string` under -O2.
inline std::string join(const std::vector<std::string>& items, const std::string& sep = ", ",
                        const std::string& quote = "") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += quote;
    out += item;
    out += quote;
  }
  return out;
}

}  // namespace peft::detail
