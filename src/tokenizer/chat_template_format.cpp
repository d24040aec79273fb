// How chat-template values print: Python's str() and repr() (what {{ x }} shows for numbers, none,
// lists and dicts), markupsafe's escape, and json.dumps as transformers' tojson calls it.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "../strings.h"
#include "chat_template_ast.h"
#include "peft/error.h"

namespace peft::detail::jinja {
namespace {

// repr(float): shortest round-trip digits, exponent form below 1e-4 and from 1e16 on.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e_at = sci.find('e');
  const int exp = std::stoi(sci.substr(e_at + 1));
  std::string mant = sci.substr(0, e_at);
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out = neg ? "-" : "";
  if (exp < -4 || exp >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return out + e;
  }
  if (exp < 0) return out + "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  const auto int_len = static_cast<size_t>(exp + 1);
  if (digits.size() <= int_len)
    return out + digits + std::string(int_len - digits.size(), '0') + ".0";
  return out + digits.substr(0, int_len) + "." + digits.substr(int_len);
}
std::string str_repr(const std::string& s) { return detail::python_str_repr(s); }
std::string json_str(const std::string& s, bool ensure_ascii) {
  return Json(s).dump(-1, ' ', ensure_ascii, nlohmann::detail::error_handler_t::replace);
}

[[noreturn]] void too_deep() {
  throw ConfigError("chat_template", "a value nested more than " +
                                         std::to_string(Limits::kMaxValueDepth) +
                                         " levels deep cannot be printed (hint: a hostile template "
                                         "or message, e.g. a list put into itself in a loop)");
}

void dump(const Json& j, const JsonStyle& style, int depth, std::string& out) {
  if (depth > Limits::kMaxValueDepth) too_deep();
  auto newline = [&](int d) {
    out += '\n';
    for (int i = 0; i < d; ++i) out += style.indent;
  };
  if (j.is_object() || j.is_array()) {
    const bool obj = j.is_object();
    if (j.empty()) {
      out += obj ? "{}" : "[]";
      return;
    }
    std::vector<std::pair<std::string, const Json*>> items;
    for (auto it = j.begin(); it != j.end(); ++it)
      items.emplace_back(obj ? it.key() : "", &it.value());
    if (obj && style.sort_keys)
      std::stable_sort(items.begin(), items.end(),
                       [](const auto& l, const auto& r) { return l.first < r.first; });
    out += obj ? '{' : '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += style.item_sep;
      if (style.pretty) newline(depth + 1);
      if (obj) out += json_str(items[i].first, style.ensure_ascii) + style.key_sep;
      dump(*items[i].second, style, depth + 1, out);
    }
    if (style.pretty) newline(depth);
    out += obj ? '}' : ']';
  } else if (j.is_string()) {
    out += json_str(j.get<std::string>(), style.ensure_ascii);
  } else if (j.is_number_float()) {
    const double d = j.get<double>();
    out += std::isnan(d)   ? "NaN"
           : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                           : float_repr(d);
  } else {
    out += j.dump();  // null, true, false, integers
  }
}
}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&#39;";
        break;
      case '"':
        out += "&#34;";
        break;
      default:
        out += c;
    }
  }
  return out;
}
namespace {

std::string repr_at(const Json& j, int depth) {
  if (depth > Limits::kMaxValueDepth) too_deep();
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_float()) return float_repr(j.get<double>());
  if (j.is_number()) return j.dump();
  if (j.is_string()) return str_repr(j.get<std::string>());
  std::string out = j.is_array() ? "[" : "{";
  bool first = true;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!first) out += ", ";
    first = false;
    if (j.is_object()) out += str_repr(it.key()) + ": ";
    out += repr_at(it.value(), depth + 1);
  }
  return out + (j.is_array() ? "]" : "}");
}

}  // namespace

std::string repr(const Json& j) { return repr_at(j, 0); }
std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNamespace: {
      std::string out = "<Namespace {";
      for (const auto& [key, value] : *v.ns) {
        if (out.size() > 12) out += ", ";
        out += repr(Json(key)) + ": " + (value.is_data() ? repr(value.json()) : to_str(value));
      }
      return out + "}>";
    }
    case Value::Kind::kCallable:
      return "<function " + v.callable + ">";
    case Value::Kind::kData:
      break;
  }
  const Json& j = v.json();
  return j.is_string() ? j.get<std::string>() : repr(j);
}

std::string to_json(const Value& v, const JsonStyle& style, const SourcePos& pos) {
  if (v.is_undefined()) fail(pos, "'" + v.hint + "' is undefined");
  if (!v.is_data()) fail(pos, "Object of type " + type_name(v) + " is not JSON serializable");
  std::string out;
  dump(v.json(), style, 0, out);
  return out;
}

}  // namespace peft::detail::jinja
