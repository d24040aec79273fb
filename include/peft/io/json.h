// JSON from a file a stranger may have made: nesting depth bounded before anything recurses over
// the value (printing a value 100,000 levels deep overflows the stack), and parse errors as
// peft::FormatError naming the input.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace peft::io {

// No file peft.cpp reads nests deeper than a handful of levels; this leaves ample room.
inline constexpr int kMaxJsonDepth = 128;

// What a bad document is: a configuration (adapter_config.json, config.json: peft::ConfigError, the
// CLI's exit 2) or data (tokenizers, data sets, checkpoints: peft::FormatError, exit 1).
enum class JsonRole { kConfig, kData };

// Throws (ConfigError or FormatError by `role`, naming `component`) `what` (a file, a line) when
// `text` nests arrays / objects deeper than `max_depth` (strings are skipped, so brackets inside
// them do not count).
void check_json_depth(std::string_view text, const std::string& component, const std::string& what,
                      JsonRole role = JsonRole::kData, int max_depth = kMaxJsonDepth);

// check_json_depth, then parse; a syntax error becomes the role's error naming `what`, with a hint.
nlohmann::json parse_json(std::string_view text, const std::string& component,
                          const std::string& what, JsonRole role = JsonRole::kData);
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& component,
                                          const std::string& what, JsonRole role = JsonRole::kData);

}  // namespace peft::io
