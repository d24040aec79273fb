// jinja2's tests, the str and dict methods templates call (message.content.strip(), d.items()),
// and the global functions: range, namespace, dict, and transformers' raise_exception and
// strftime_now.
#include <cstdint>
#include <ctime>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "chat_template_ast.h"
#include "peft/error.h"

namespace peft::detail::jinja {

Value Args::get(size_t index, const char* name) const {
  for (const auto& [key, value] : named) {
    if (key == name) return value;
  }
  return index < positional.size() ? positional[index] : Value::undefined(name);
}

const std::string& Args::str(size_t index, const char* name, const SourcePos& pos) const {
  for (const auto& [key, value] : named) {
    if (key == name) return expect_str(value, std::string("argument '") + name + "'", pos);
  }
  if (index < positional.size())
    return expect_str(positional[index], std::string("argument '") + name + "'", pos);
  fail(pos, std::string("missing argument '") + name + "'");
}

int64_t Args::integer(size_t index, const char* name, int64_t fallback,
                      const SourcePos& pos) const {
  const Value v = get(index, name);
  if (v.is_undefined() || (v.is_data() && v.json().is_null())) return fallback;
  if (v.is_data() && v.json().is_boolean()) return v.json().get<bool>() ? 1 : 0;
  if (v.is_data() && v.json().is_number_integer()) return v.json().get<int64_t>();
  fail(pos, std::string("argument '") + name + "' must be an int, not " + type_name(v));
}

Args Args::drop(size_t n) const {
  Args out;
  for (size_t i = n; i < positional.size(); ++i) out.positional.push_back(positional[i]);
  out.named = named;
  return out;
}

const std::string& expect_str(const Value& v, const std::string& what, const SourcePos& pos) {
  if (v.is_data() && v.json().is_string()) return v.json().get_ref<const std::string&>();
  fail(pos, what + " must be a string, not " + type_name(v));
}

bool is_known_test(const std::string& name) {
  static const std::set<std::string> kNames = {
      "boolean", "callable", "defined", "divisibleby", "eq",        "equalto", "even",     "false",
      "float",   "ge",       "gt",      "greaterthan", "in",        "integer", "iterable", "le",
      "lower",   "lessthan", "lt",      "mapping",     "ne",        "none",    "number",   "odd",
      "sameas",  "sequence", "string",  "true",        "undefined", "upper",   "==",       "!=",
      "<",       "<=",       ">",       ">="};
  return kNames.count(name) > 0;
}

bool is_global_function(const std::string& name) {
  return name == "raise_exception" || name == "range" || name == "namespace" ||
         name == "strftime_now" || name == "dict";
}

bool apply_test(const std::string& name, const Value& v, const Args& args, const SourcePos& pos) {
  const bool data = v.is_data();
  const Json null_json;
  const Json& j = data ? v.json() : null_json;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "callable") return v.kind == Value::Kind::kCallable;
  if (name == "none") return data && j.is_null();
  if (name == "boolean") return data && j.is_boolean();
  if (name == "true" || name == "false")
    return data && j.is_boolean() && j.get<bool>() == (name == "true");
  if (name == "integer") return data && j.is_number_integer();
  if (name == "float") return data && j.is_number_float();
  if (name == "number") return data && (j.is_number() || j.is_boolean());
  if (name == "string") return data && j.is_string();
  if (name == "mapping") return data && j.is_object();
  if (name == "iterable") return data && (j.is_array() || j.is_object() || j.is_string());
  if (name == "sequence") return data && (j.is_array() || j.is_object() || j.is_string());
  if (name == "lower" || name == "upper") {
    if (!data || !j.is_string()) return false;
    const std::string& s = j.get_ref<const std::string&>();
    return name == "lower" ? py_is_lower(s) : py_is_upper(s);
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!data || !j.is_number_integer()) fail(pos, "test '" + name + "' expects an integer");
    const int64_t n = j.get<int64_t>();
    if (name == "divisibleby") {
      const int64_t d = args.integer(0, "num", 0, pos);
      if (d == 0) fail(pos, "divisibleby 0");
      return n % d == 0;
    }
    return (n % 2 != 0) == (name == "odd");
  }
  const Value other = args.get(0, "other");
  if (name == "sameas") {
    if (!data || !other.is_data()) return v.kind == other.kind && equals(v, other);
    return j.type() == other.json().type() && equals(v, other) &&
           (j.is_null() || j.is_boolean() || v.data == other.data);
  }
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, other);
  if (name == "ne" || name == "!=") return !equals(v, other);
  if (name == "lt" || name == "lessthan" || name == "<") return less(v, other, pos);
  if (name == "gt" || name == "greaterthan" || name == ">") return less(other, v, pos);
  if (name == "le" || name == "<=") return !less(other, v, pos);
  if (name == "ge" || name == ">=") return !less(v, other, pos);
  if (name == "in") return contains(other, v, pos);
  fail(pos, "no test named '" + name + "'");
}

bool call_method(const Value& obj, const std::string& name, const Args& args, const SourcePos& pos,
                 Value& result) {
  if (!obj.is_data()) return false;
  const Json& j = obj.json();
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value chars = args.get(0, "chars");
      const std::string* set = chars.is_data() && chars.json().is_string()
                                   ? &chars.json().get_ref<const std::string&>()
                                   : nullptr;
      result = Value::of(py_strip(s, name != "rstrip", name != "lstrip", set));
    } else if (name == "startswith" || name == "endswith") {
      const Value pre = args.get(0, "prefix");
      std::vector<std::string> options;
      if (pre.is_data() && pre.json().is_array()) {
        for (const auto& o : pre.json())
          options.push_back(o.is_string() ? o.get<std::string>() : "");
      } else {
        options.push_back(expect_str(pre, name, pos));
      }
      bool hit = false;
      for (const auto& o : options) {
        hit = hit || (o.size() <= s.size() &&
                      (name == "startswith" ? s.compare(0, o.size(), o) == 0
                                            : s.compare(s.size() - o.size(), o.size(), o) == 0));
      }
      result = Value::of(hit);
    } else if (name == "split") {
      result = Value::of(py_split(s, args.get(0, "sep"), args.integer(1, "maxsplit", -1, pos)));
    } else if (name == "replace") {
      result = Value::of(py_replace(s, args.str(0, "old", pos), args.str(1, "new", pos),
                                    args.integer(2, "count", -1, pos)));
    } else if (name == "upper" || name == "lower") {
      result = Value::of(name == "upper" ? py_upper(s) : py_lower(s));
    } else if (name == "title") {
      result = Value::of(py_title(s));
    } else if (name == "capitalize") {
      result = Value::of(py_capitalize(s));
    } else if (name == "find") {
      const size_t hit = s.find(args.str(0, "sub", pos));
      result = Value::of(hit == std::string::npos
                             ? int64_t{-1}
                             : static_cast<int64_t>(utf8_chars(s.substr(0, hit)).size()));
    } else if (name == "count") {
      result = Value::of(static_cast<int64_t>(py_split(s, args.get(0, "sub"), -1).size()) - 1);
    } else if (name == "join") {
      Args join_args;
      join_args.positional.push_back(obj);
      result = apply_filter("join", args.get(0, "iterable"), join_args, pos);
    } else {
      return false;
    }
    return true;
  }
  if (j.is_object()) {
    if (name == "items") {
      result = apply_filter("items", obj, Args{}, pos);
    } else if (name == "keys" || name == "values") {
      Json out = Json::array();
      for (auto it = j.begin(); it != j.end(); ++it)
        out.push_back(name == "keys" ? Json(it.key()) : it.value());
      result = Value::of(std::move(out));
    } else if (name == "get") {
      const std::string& key = args.str(0, "key", pos);
      const Value fallback = args.get(1, "default");
      result = j.contains(key) ? Value::alias(obj, j[key])
                               : (fallback.is_undefined() ? Value::of(nullptr) : fallback);
    } else {
      return false;
    }
    return true;
  }
  return false;
}

Value call_global(const std::string& name, const Args& args, const SourcePos& pos) {
  if (name == "raise_exception") {
    throw ConfigError("chat_template",
                      "the template raised an error: " + to_str(args.get(0, "message")) +
                          " (template line " + std::to_string(pos.line) + ", column " +
                          std::to_string(pos.column) + ")");
  }
  if (name == "range") {
    int64_t start = 0, stop = 0, step = 1;
    if (args.positional.size() == 1) {
      stop = args.integer(0, "stop", 0, pos);
    } else {
      start = args.integer(0, "start", 0, pos);
      stop = args.integer(1, "stop", 0, pos);
      step = args.integer(2, "step", 1, pos);
    }
    if (step == 0) fail(pos, "range() arg 3 must not be zero");
    Json out = Json::array();
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 100000) fail(pos, "range() is too big (the sandbox limit is 100000 items)");
      out.push_back(i);
    }
    return Value::of(std::move(out));
  }
  if (name == "namespace" || name == "dict") {
    Value ns;
    ns.kind = Value::Kind::kNamespace;
    ns.ns = std::make_shared<NamespaceAttrs>();
    auto set = [&](const std::string& key, const Value& value) {
      if (Value* slot = ns.ns_attr(key)) {
        *slot = value;
      } else {
        ns.ns->emplace_back(key, value);
      }
    };
    for (const Value& p : args.positional) {
      if (!p.is_data() || !p.json().is_object()) continue;
      for (auto it = p.json().begin(); it != p.json().end(); ++it)
        set(it.key(), Value::alias(p, *it));
    }
    for (const auto& [key, value] : args.named) set(key, value);
    if (name == "namespace") return ns;
    Json dict = Json::object();
    for (const auto& [key, value] : *ns.ns) dict[key] = value.is_data() ? value.json() : Json();
    return Value::of(std::move(dict));
  }
  if (name == "strftime_now") {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof(buf), args.str(0, "format", pos).c_str(), &local);
    return Value::of(std::string(buf, n));
  }
  fail(pos, "'" + name + "' is not callable");
}

}  // namespace peft::detail::jinja
