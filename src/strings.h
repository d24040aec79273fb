// Small string helpers for messages (private to the library).
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
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

// Python's tuple spelling of a shape: (8, 4096), (4,), ().
inline std::string shape_string(c10::IntArrayRef shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += shape.size() == 1 ? ",)" : ")";
  return out;
}

}  // namespace peft::detail
