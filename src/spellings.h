// The string edge of an enum: one table of spellings per enum, so that parsing (with an error
// listing every accepted spelling) and printing use the same words (private to the library; the
// public parse_* functions wrap it).
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>

namespace peft::detail {

template <class E, size_t N>
using Spellings = std::array<std::pair<E, const char*>, N>;

template <class E, size_t N>
std::optional<E> find_spelling(const Spellings<E, N>& table, const std::string& s) {
  for (const auto& [value, name] : table) {
    if (s == name) return value;
  }
  return std::nullopt;
}

// The table's word for `value` ("?" when the table lacks it).
template <class E, size_t N>
const char* spelling_of(const Spellings<E, N>& table, E value) {
  for (const auto& [v, name] : table) {
    if (v == value) return name;
  }
  return "?";
}

// Every spelling, quoted and comma-separated: "a", "b", "c".
template <class E, size_t N>
std::string accepted_spellings(const Spellings<E, N>& table) {
  std::string out;
  for (const auto& [v, name] : table) {
    if (!out.empty()) out += ", ";
    out += '"';
    out += name;
    out += '"';
  }
  return out;
}

}  // namespace peft::detail
