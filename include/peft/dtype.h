// torch dtype names at the string edge (--dtype, config.json's torch_dtype /
// bnb_4bit_compute_dtype, bitsandbytes' quant state): one parser for every reader.
#pragma once

#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

namespace peft {

// "float32" / "float" / "fp32", "float16" / "half" / "fp16", "bfloat16" / "bf16", each also with
// torch's "torch." prefix; nullopt for anything else.
std::optional<c10::ScalarType> find_dtype(const std::string& name);
// The same, throwing ConfigError(component) that names the value and lists the accepted spellings.
c10::ScalarType parse_dtype(const std::string& name, const std::string& component = "dtype");
// torch's name without the prefix: "float32", "float16", "bfloat16" (what str(dtype)[6:] gives).
std::string dtype_name(c10::ScalarType dtype);

}  // namespace peft
