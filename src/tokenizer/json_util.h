// Reading tokenizer.json components: typed field access whose errors name the file and the JSON
// path of the offending field ("[tokenizer] tokenizer.json: pre_tokenizer.pretokenizers[1]...").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace peft::detail::tok {

using json = nlohmann::json;

// A component's place: its file and JSON path.
struct Where {
  std::string file;
  std::string path;
  Where operator/(const std::string& key) const;
  Where at(size_t index) const;
  std::string str() const;  // "file: path"
};

// "[tokenizer] <file>: <path>: <what>" as peft::FormatError / peft::UnsupportedError.
[[noreturn]] void format_error(const Where& where, const std::string& what);
[[noreturn]] void unsupported(const Where& where, const std::string& what);

// The JSON type name for messages ("string", "number", "object", ...).
std::string type_name(const json& value);

// Field access on an object `obj` (checked to be an object). Absent or null fields take
// `fallback` when given, else throw FormatError; present fields of the wrong type always throw.
const json& field(const json& obj, const char* key, const Where& where);
std::string get_string(const json& obj, const char* key, const Where& where,
                       std::optional<std::string> fallback = std::nullopt);
std::optional<std::string> get_optional_string(const json& obj, const char* key,
                                               const Where& where);
bool get_bool(const json& obj, const char* key, const Where& where,
              std::optional<bool> fallback = std::nullopt);
int64_t get_int(const json& obj, const char* key, const Where& where,
                std::optional<int64_t> fallback = std::nullopt);
// A string field holding exactly one character (Metaspace replacement, Strip content, ...).
std::string get_char(const json& obj, const char* key, const Where& where,
                     std::optional<std::string> fallback = std::nullopt);

// The "type" tag of a component object.
std::string get_type(const json& obj, const Where& where);

// Throws UnsupportedError listing `supported` for an unknown `type`.
[[noreturn]] void unknown_type(const Where& where, const std::string& kind, const std::string& type,
                               const std::vector<std::string>& supported);

}  // namespace peft::detail::tok
