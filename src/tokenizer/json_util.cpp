#include "json_util.h"

#include "../strings.h"
#include "peft/error.h"
#include "unicode.h"

namespace peft::detail::tok {

Where Where::operator/(const std::string& key) const {
  return {file, path.empty() ? key : path + "." + key};
}

Where Where::at(size_t index) const { return {file, path + "[" + std::to_string(index) + "]"}; }

std::string Where::str() const { return path.empty() ? file : file + ": " + path; }

void format_error(const Where& where, const std::string& what) {
  throw FormatError("tokenizer", where.str() + ": " + what);
}

void unsupported(const Where& where, const std::string& what) {
  throw UnsupportedError("tokenizer", where.str() + ": " + what);
}

std::string type_name(const json& value) { return value.type_name(); }

const json& field(const json& obj, const char* key, const Where& where) {
  if (!obj.is_object()) format_error(where, "is " + type_name(obj) + "; expected an object");
  auto it = obj.find(key);
  if (it == obj.end()) format_error(where / key, "missing; expected a value");
  return *it;
}

namespace {
// The field, or nullptr when absent or null.
const json* find(const json& obj, const char* key, const Where& where) {
  if (!obj.is_object()) format_error(where, "is " + type_name(obj) + "; expected an object");
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void missing(const Where& where) { format_error(where, "missing; expected a value"); }
}  // namespace

std::string get_string(const json& obj, const char* key, const Where& where,
                       std::optional<std::string> fallback) {
  const json* v = find(obj, key, where);
  if (v == nullptr) {
    if (!fallback) missing(where / key);
    return *fallback;
  }
  if (!v->is_string()) format_error(where / key, "is " + type_name(*v) + "; expected a string");
  return v->get<std::string>();
}

std::optional<std::string> get_optional_string(const json& obj, const char* key,
                                               const Where& where) {
  const json* v = find(obj, key, where);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) format_error(where / key, "is " + type_name(*v) + "; expected a string");
  return v->get<std::string>();
}

bool get_bool(const json& obj, const char* key, const Where& where, std::optional<bool> fallback) {
  const json* v = find(obj, key, where);
  if (v == nullptr) {
    if (!fallback) missing(where / key);
    return *fallback;
  }
  if (!v->is_boolean()) format_error(where / key, "is " + type_name(*v) + "; expected a boolean");
  return v->get<bool>();
}

int64_t get_int(const json& obj, const char* key, const Where& where,
                std::optional<int64_t> fallback) {
  const json* v = find(obj, key, where);
  if (v == nullptr) {
    if (!fallback) missing(where / key);
    return *fallback;
  }
  if (!v->is_number_integer()) {
    format_error(where / key, "is " + type_name(*v) + "; expected an integer");
  }
  return v->get<int64_t>();
}

std::string get_char(const json& obj, const char* key, const Where& where,
                     std::optional<std::string> fallback) {
  std::string s = get_string(obj, key, where, std::move(fallback));
  if (s.empty() || utf8_length(static_cast<unsigned char>(s[0])) != s.size()) {
    format_error(where / key, "is \"" + s + "\"; expected a single character");
  }
  return s;
}

std::string get_type(const json& obj, const Where& where) { return get_string(obj, "type", where); }

void unknown_type(const Where& where, const std::string& kind, const std::string& type,
                  const std::vector<std::string>& supported) {
  unsupported(where / "type", kind + " \"" + type +
                                  "\" is not supported; supported: " + join(supported) +
                                  " (hint: peft.cpp implements the components "
                                  "of GPT-2, Llama 2/3, Mistral, Qwen2, BERT and RoBERTa)");
}

}  // namespace peft::detail::tok
