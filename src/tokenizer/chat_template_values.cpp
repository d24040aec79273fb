// Python semantics of chat-template values: truthiness, equality and ordering, arithmetic, `in`,
// iteration and len(), as jinja2 inherits them from Python.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat_template_ast.h"

namespace peft::detail::jinja {

Value Value::undefined(std::string what) {
  Value v;
  v.hint = std::move(what);
  return v;
}

Value Value::of(Json j) {
  Value v;
  v.kind = Kind::kData;
  v.data = std::make_shared<const Json>(std::move(j));
  return v;
}

Value* Value::ns_attr(const std::string& name) const {
  for (auto& [key, value] : *ns) {
    if (key == name) return &value;
  }
  return nullptr;
}

Value Value::alias(const Value& parent, const Json& child) {
  Value v;
  v.kind = Kind::kData;
  v.data = std::shared_ptr<const Json>(parent.data, &child);
  return v;
}

namespace {

bool is_number(const Json& j) { return j.is_number() || j.is_boolean(); }
bool is_int(const Json& j) { return j.is_number_integer() || j.is_boolean(); }
int64_t as_int(const Json& j) {
  return j.is_boolean() ? (j.get<bool>() ? 1 : 0) : j.get<int64_t>();
}
double as_double(const Json& j) {
  return j.is_boolean() ? (j.get<bool>() ? 1.0 : 0.0) : j.get<double>();
}

[[noreturn]] void type_error(const SourcePos& pos, const std::string& op, const Value& a,
                             const Value& b) {
  fail(pos, "unsupported operand types for " + op + ": '" + type_name(a) + "' and '" +
                type_name(b) + "'");
}

void require_defined(const Value& v, const SourcePos& pos) {
  if (v.is_undefined()) fail(pos, "'" + v.hint + "' is undefined");
  if (!v.is_data()) fail(pos, "a " + type_name(v) + " cannot be used here");
}

}  // namespace

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kCallable:
      return v.macro ? "Macro" : "function";
    case Value::Kind::kData:
      break;
  }
  const Json& j = v.json();
  if (j.is_null()) return "NoneType";
  if (j.is_boolean()) return "bool";
  if (j.is_number_integer()) return "int";
  if (j.is_number_float()) return "float";
  if (j.is_string()) return "str";
  if (j.is_array()) return "list";
  return "dict";
}
bool truthy(const Value& v) {
  if (v.kind != Value::Kind::kData) return v.kind != Value::Kind::kUndefined;
  const Json& j = v.json();
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<int64_t>() != 0;
  if (j.is_number_float()) return j.get<double>() != 0.0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  return !j.empty();
}
bool equals(const Value& a, const Value& b) {
  if (a.kind != Value::Kind::kData || b.kind != Value::Kind::kData) {
    if (a.kind != b.kind) return false;
    if (a.kind == Value::Kind::kNamespace) return a.ns == b.ns;
    if (a.kind == Value::Kind::kCallable) return a.callable == b.callable && a.macro == b.macro;
    return true;  // undefined == undefined
  }
  const Json& x = a.json();
  const Json& y = b.json();
  if (is_number(x) && is_number(y)) {
    if (is_int(x) && is_int(y)) return as_int(x) == as_int(y);
    return as_double(x) == as_double(y);
  }
  if (x.type() != y.type()) return false;
  if (x.is_array()) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!equals(Value::alias(a, x[i]), Value::alias(b, y[i]))) return false;
    }
    return true;
  }
  if (x.is_object()) {
    if (x.size() != y.size()) return false;
    for (auto it = x.begin(); it != x.end(); ++it) {
      auto other = y.find(it.key());
      if (other == y.end() || !equals(Value::alias(a, it.value()), Value::alias(b, *other)))
        return false;
    }
    return true;
  }
  return x == y;
}

bool less(const Value& a, const Value& b, const SourcePos& pos) {
  if (a.is_data() && b.is_data()) {
    const Json& x = a.json();
    const Json& y = b.json();
    if (is_number(x) && is_number(y)) {
      if (is_int(x) && is_int(y)) return as_int(x) < as_int(y);
      return as_double(x) < as_double(y);
    }
    if (x.is_string() && y.is_string())
      return x.get_ref<const std::string&>() < y.get_ref<const std::string&>();
    if (x.is_array() && y.is_array()) {
      for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
        const Value xi = Value::alias(a, x[i]);
        const Value yi = Value::alias(b, y[i]);
        if (!equals(xi, yi)) return less(xi, yi, pos);
      }
      return x.size() < y.size();
    }
  }
  fail(pos, "'<' is not supported between instances of '" + type_name(a) + "' and '" +
                type_name(b) + "'");
}

Value binary_op(const std::string& op, const Value& a, const Value& b, const SourcePos& pos) {
  if (op == "~") {
    std::string l = to_str(a);
    const std::string r = to_str(b);
    check_size(uint64_t{l.size()} + r.size(), pos);
    return Value::of(l += r);
  }
  require_defined(a, pos);
  require_defined(b, pos);
  const Json& x = a.json();
  const Json& y = b.json();
  if (is_number(x) && is_number(y)) {
    const bool ints = is_int(x) && is_int(y);
    if (op == "/") {
      if (as_double(y) == 0.0) fail(pos, "division by zero");
      return Value::of(as_double(x) / as_double(y));
    }
    if (ints) {
      const int64_t l = as_int(x);
      const int64_t r = as_int(y);
      int64_t out = 0;
      bool overflow = false;
      if (op == "+") {
        overflow = __builtin_add_overflow(l, r, &out);
      } else if (op == "-") {
        overflow = __builtin_sub_overflow(l, r, &out);
      } else if (op == "*") {
        overflow = __builtin_mul_overflow(l, r, &out);
      } else if (op == "//" || op == "%") {
        if (r == 0) fail(pos, "integer division or modulo by zero");
        int64_t q = l / r;
        int64_t m = l % r;
        if (m != 0 && ((m < 0) != (r < 0))) {  // Python floors toward negative infinity
          --q;
          m += r;
        }
        out = op == "//" ? q : m;
      } else if (op == "**") {
        if (r < 0) return Value::of(std::pow(static_cast<double>(l), static_cast<double>(r)));
        // 0, 1 and -1 never overflow: answer them directly (1 ** 10**18 would loop 10**18 times).
        if (l == 0 || l == 1) return Value::of(r == 0 ? int64_t{1} : l);
        if (l == -1) return Value::of(r % 2 == 0 ? int64_t{1} : int64_t{-1});
        out = 1;
        for (int64_t i = 0; i < r && !overflow; ++i)  // |l| >= 2: overflows within 64 steps
          overflow = __builtin_mul_overflow(out, l, &out);
      }
      if (overflow) fail(pos, "integer overflow in '" + op + "'");
      return Value::of(out);
    }
    const double l = as_double(x);
    const double r = as_double(y);
    if (op == "+") return Value::of(l + r);
    if (op == "-") return Value::of(l - r);
    if (op == "*") return Value::of(l * r);
    if (op == "**") return Value::of(std::pow(l, r));
    if (r == 0.0) fail(pos, "float division or modulo by zero");
    const double q = std::floor(l / r);
    return Value::of(op == "//" ? q : l - q * r);
  }
  if (op == "+" && x.is_string() && y.is_string()) {
    const std::string& l = x.get_ref<const std::string&>();
    const std::string& r = y.get_ref<const std::string&>();
    check_size(uint64_t{l.size()} + r.size(), pos);
    if (!a.markup && !b.markup) return Value::of(l + r);
    // Markup.__add__ / __radd__ escape the plain operand (functionary's template relies on it).
    Value out = Value::of((a.markup ? l : html_escape(l)) + (b.markup ? r : html_escape(r)));
    out.markup = true;
    return out;
  }
  if (op == "+" && x.is_array() && y.is_array()) {
    check_size(uint64_t{x.size()} + y.size(), pos);
    Json out = x;
    for (const auto& item : y) out.push_back(item);
    return Value::of(std::move(out));
  }
  if (op == "*" && (x.is_string() || x.is_array() || y.is_string() || y.is_array()) &&
      (is_int(x) || is_int(y))) {
    const Json& seq = is_int(x) ? y : x;
    const int64_t n = is_int(x) ? as_int(x) : as_int(y);
    const uint64_t unit = seq.is_string() ? seq.get_ref<const std::string&>().size() : seq.size();
    if (n > 0 && unit > 0) {
      // Checked before allocating: 'x' * 100000000000 would ask for 100 GB.
      check_size(static_cast<uint64_t>(n) > Limits::kMaxBytes / unit
                     ? Limits::kMaxBytes + 1
                     : unit * static_cast<uint64_t>(n),
                 pos);
    } else if (n > 0 && static_cast<uint64_t>(n) > Limits::kMaxBytes) {
      check_size(static_cast<uint64_t>(n), pos);  // '' * 10**18 would loop 10**18 times
    }
    Json out = seq.is_string() ? Json("") : Json::array();
    for (int64_t i = 0; i < n; ++i) {
      if (seq.is_string()) {
        out.get_ref<std::string&>() += seq.get_ref<const std::string&>();
      } else {
        for (const auto& item : seq) out.push_back(item);
      }
    }
    return Value::of(std::move(out));
  }
  if (op == "+" && x.is_string() != y.is_string() && (x.is_string() || y.is_string())) {
    fail(pos, "can only concatenate str (not \"" + type_name(x.is_string() ? b : a) +
                  "\") to str (hint: use '~' to concatenate a value as text)");
  }
  type_error(pos, op, a, b);
}

bool contains(const Value& container, const Value& item, const SourcePos& pos) {
  if (container.is_undefined()) return false;
  if (!container.is_data())
    fail(pos, "argument of type '" + type_name(container) + "' is not iterable");
  const Json& c = container.json();
  if (c.is_string()) {
    if (!item.is_data() || !item.json().is_string()) {
      fail(pos, "'in <string>' requires string as left operand, not " + type_name(item));
    }
    return c.get_ref<const std::string&>().find(item.json().get_ref<const std::string&>()) !=
           std::string::npos;
  }
  if (c.is_array()) {
    for (const auto& e : c) {
      if (equals(Value::alias(container, e), item)) return true;
    }
    return false;
  }
  if (c.is_object())
    return item.is_data() && item.json().is_string() && c.contains(item.json().get<std::string>());
  fail(pos, "argument of type '" + type_name(container) + "' is not iterable");
}

std::vector<Value> iterate(const Value& v, const SourcePos& pos) {
  std::vector<Value> out;
  if (v.is_undefined()) return out;
  if (!v.is_data()) fail(pos, "'" + type_name(v) + "' object is not iterable");
  const Json& j = v.json();
  if (j.is_array()) {
    for (const auto& e : j) out.push_back(Value::alias(v, e));
  } else if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) out.push_back(Value::of(it.key()));
  } else if (j.is_string()) {
    for (auto& ch : utf8_chars(j.get<std::string>())) out.push_back(Value::of(std::move(ch)));
  } else {
    fail(pos, "'" + type_name(v) + "' object is not iterable");
  }
  return out;
}

int64_t length(const Value& v, const SourcePos& pos) {
  if (v.is_undefined()) return 0;
  if (v.is_data()) {
    const Json& j = v.json();
    if (j.is_string()) return static_cast<int64_t>(utf8_chars(j.get<std::string>()).size());
    if (j.is_array() || j.is_object()) return static_cast<int64_t>(j.size());
  }
  fail(pos, "object of type '" + type_name(v) + "' has no len()");
}
}  // namespace peft::detail::jinja
