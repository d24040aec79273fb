// torch dtype names: one table for every reader and writer of them.
#include "peft/dtype.h"

#include "peft/error.h"
#include "spellings.h"

namespace peft {
namespace {

constexpr detail::Spellings<c10::ScalarType, 8> kDtypes{{
    {c10::kFloat, "float32"},
    {c10::kFloat, "float"},
    {c10::kFloat, "fp32"},
    {c10::kHalf, "float16"},
    {c10::kHalf, "half"},
    {c10::kHalf, "fp16"},
    {c10::kBFloat16, "bfloat16"},
    {c10::kBFloat16, "bf16"},
}};

}  // namespace

std::optional<c10::ScalarType> find_dtype(const std::string& name) {
  const std::string bare = name.rfind("torch.", 0) == 0 ? name.substr(6) : name;
  return detail::find_spelling(kDtypes, bare);
}

c10::ScalarType parse_dtype(const std::string& name, const std::string& component) {
  const auto d = find_dtype(name);
  PEFT_CHECK(d.has_value(), ConfigError, component,
             "unknown dtype \"" << name << "\"; expected one of "
                                << detail::accepted_spellings(kDtypes)
                                << " (optionally with the \"torch.\" prefix)");
  return *d;
}

std::string dtype_name(c10::ScalarType dtype) { return detail::spelling_of(kDtypes, dtype); }

}  // namespace peft
