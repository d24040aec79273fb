// add_weighted_adapter's combination types at their string edge (PEFT's spellings) and what each
// one implies.
#include "../spellings.h"
#include "peft/combine.h"
#include "peft/error.h"

namespace peft {
namespace {

using T = CombinationType;

constexpr detail::Spellings<CombinationType, 11> kCombinationTypes{{
    {T::kSvd, "svd"},
    {T::kLinear, "linear"},
    {T::kCat, "cat"},
    {T::kTies, "ties"},
    {T::kTiesSvd, "ties_svd"},
    {T::kDareTies, "dare_ties"},
    {T::kDareLinear, "dare_linear"},
    {T::kDareTiesSvd, "dare_ties_svd"},
    {T::kDareLinearSvd, "dare_linear_svd"},
    {T::kMagnitudePrune, "magnitude_prune"},
    {T::kMagnitudePruneSvd, "magnitude_prune_svd"},
}};

}  // namespace

CombinationType parse_combination_type(const std::string& s) {
  const auto t = detail::find_spelling(kCombinationTypes, s);
  if (!t) {
    throw ConfigError("add_weighted_adapter",
                      "Invalid combination_type: " + s + " (expected one of " +
                          detail::accepted_spellings(kCombinationTypes) +
                          "; hint: \"cat\" is exact, \"linear\" needs equal ranks, "
                          "\"svd\" is PEFT's default)");
  }
  return *t;
}

std::string to_string(CombinationType type) { return detail::spelling_of(kCombinationTypes, type); }

std::vector<std::string> combination_type_spellings() {
  std::vector<std::string> out;
  for (const auto& [t, name] : kCombinationTypes) out.emplace_back(name);
  return out;
}

bool is_svd_type(CombinationType type) {
  switch (type) {
    case T::kSvd:
    case T::kTiesSvd:
    case T::kDareTiesSvd:
    case T::kDareLinearSvd:
    case T::kMagnitudePruneSvd:
      return true;
    default:
      return false;
  }
}

CombinationType merge_of(CombinationType type) {
  switch (type) {
    case T::kSvd:
      return T::kLinear;
    case T::kTiesSvd:
      return T::kTies;
    case T::kDareTiesSvd:
      return T::kDareTies;
    case T::kDareLinearSvd:
      return T::kDareLinear;
    case T::kMagnitudePruneSvd:
      return T::kMagnitudePrune;
    default:
      return type;
  }
}

bool needs_density(CombinationType type) {
  const CombinationType m = merge_of(type);
  return m != T::kLinear && m != T::kCat;
}

}  // namespace peft
