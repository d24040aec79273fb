// Depth-bounded JSON parsing.
#include "peft/io/json.h"

#include "peft/error.h"

namespace peft::io {
namespace {

[[noreturn]] void fail(JsonRole role, const std::string& component, const std::string& message) {
  if (role == JsonRole::kConfig) throw ConfigError(component, message);
  throw FormatError(component, message);
}

template <class Json>
Json parse_as(std::string_view text, const std::string& component, const std::string& what,
              JsonRole role) {
  check_json_depth(text, component, what, role);
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // syntax, or a number out of range (406)
    fail(role, component,
         what + ": not valid JSON: " + e.what() + " (hint: is the file complete and really JSON?)");
  }
}

}  // namespace

void check_json_depth(std::string_view text, const std::string& component, const std::string& what,
                      JsonRole role, int max_depth) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        fail(role, component,
             what + ": JSON nested more than " + std::to_string(max_depth) +
                 " levels deep (at byte " + std::to_string(i) +
                 "); expected a shallow document (hint: the file is corrupt or hostile)");
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

nlohmann::json parse_json(std::string_view text, const std::string& component,
                          const std::string& what, JsonRole role) {
  return parse_as<nlohmann::json>(text, component, what, role);
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& component,
                                          const std::string& what, JsonRole role) {
  return parse_as<nlohmann::ordered_json>(text, component, what, role);
}

}  // namespace peft::io
