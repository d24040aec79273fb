// jinja2's builtin filters that chat templates use, with transformers' tojson (json.dumps with
// ensure_ascii=False, key order kept, optional indent) in place of jinja2's HTML-safe one.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "chat_template_ast.h"

namespace peft::detail::jinja {
namespace {

// jinja2's title filter: words start after runs of whitespace, '-', '(', '{', '[' or '<'.
std::string jinja_title(const std::string& s) {
  std::string out;
  bool word_start = true;
  for (const auto& ch : utf8_chars(s)) {
    const bool sep = ch == "-" || ch == "(" || ch == "{" || ch == "[" || ch == "<" ||
                     py_strip(ch, true, true).empty();
    out += sep ? ch : (word_start ? py_upper(ch) : py_lower(ch));
    word_start = sep;
  }
  return out;
}

// selectattr/rejectattr/map(attribute=...): the item's attribute, dotted paths allowed.
Value attribute_of(const Value& item, const std::string& path) {
  Value cur = item;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string key =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur.is_data() || !cur.json().is_object() || !cur.json().contains(key))
      return Value::undefined(key);
    cur = Value::alias(cur, cur.json()[key]);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

Value select_items(const std::string& name, const Value& seq, const Args& args,
                   const SourcePos& pos) {
  const bool by_attr = name == "selectattr" || name == "rejectattr";
  const bool keep = name == "select" || name == "selectattr";
  Json out = Json::array();
  for (const Value& item : iterate(seq, pos)) {
    Value subject = item;
    size_t test_at = 0;
    if (by_attr) {
      subject = attribute_of(item, args.str(0, "attribute", pos));
      test_at = 1;
    }
    bool pass;
    if (test_at < args.positional.size()) {
      pass = apply_test(expect_str(args.positional[test_at], name, pos), subject,
                        args.drop(test_at + 1), pos);
    } else {
      pass = truthy(subject);
    }
    if (pass == keep) out.push_back(item.is_data() ? item.json() : Json());
  }
  return Value::of(std::move(out));
}

// transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
JsonStyle json_style(const Args& args, const SourcePos& pos) {
  JsonStyle style;
  style.ensure_ascii = truthy(args.get(0, "ensure_ascii"));
  const Value indent = args.get(1, "indent");
  if (indent.is_data() && indent.json().is_string()) {
    style.pretty = true;
    style.indent = indent.json().get<std::string>();
  } else if (indent.is_data() && !indent.json().is_null()) {
    style.pretty = true;
    const int64_t width = std::max<int64_t>(0, args.integer(1, "indent", 0, pos));
    check_size(static_cast<uint64_t>(width), pos);
    style.indent.assign(static_cast<size_t>(width), ' ');
  }
  if (style.pretty) style.item_sep = ",";
  const Value seps = args.get(2, "separators");
  if (seps.is_data() && !seps.json().is_null()) {
    const Json& j = seps.json();
    if (!j.is_array() || j.size() != 2 || !j[0].is_string() || !j[1].is_string()) {
      fail(pos, "tojson separators must be an (item_separator, key_separator) pair of strings");
    }
    style.item_sep = j[0].get<std::string>();
    style.key_sep = j[1].get<std::string>();
  }
  style.sort_keys = truthy(args.get(3, "sort_keys"));
  return style;
}

const std::set<std::string>& filter_names() {
  static const std::set<std::string> kNames = {
      "abs",    "capitalize", "count",  "d",      "default",     "first",   "float",   "indent",
      "int",    "items",      "join",   "last",   "length",      "list",    "lower",   "map",
      "reject", "rejectattr", "e",      "escape", "forceescape", "replace", "reverse", "safe",
      "select", "selectattr", "string", "title",  "tojson",      "trim",    "unique",  "upper"};
  return kNames;
}

}  // namespace

bool is_known_filter(const std::string& name) { return filter_names().count(name) > 0; }

Value apply_filter(const std::string& name, const Value& v, const Args& args,
                   const SourcePos& pos) {
  if (!is_known_filter(name)) fail(pos, "no filter named '" + name + "'");
  if (name == "default" || name == "d") {
    const bool boolean = truthy(args.get(1, "boolean"));
    if (v.is_undefined() || (boolean && !truthy(v))) {
      const Value fallback = args.get(0, "default_value");
      return fallback.is_undefined() ? Value::of("") : fallback;
    }
    return v;
  }
  if (name == "safe" || name == "escape" || name == "e" || name == "forceescape") {
    Value out = v.markup && name != "forceescape"
                    ? v
                    : Value::of(name == "safe" ? to_str(v) : html_escape(to_str(v)));
    out.markup = true;
    return out;
  }
  if (name == "string") return Value::of(to_str(v));
  if (name == "length" || name == "count") return Value::of(length(v, pos));
  if (name == "tojson") return Value::of(to_json(v, json_style(args, pos), pos));
  if (name == "trim") {
    const Value chars = args.get(0, "chars");
    const std::string* set = chars.is_data() && chars.json().is_string()
                                 ? &chars.json().get_ref<const std::string&>()
                                 : nullptr;
    return Value::of(py_strip(to_str(v), true, true, set));
  }
  if (name == "upper") return Value::of(py_upper(to_str(v)));
  if (name == "lower") return Value::of(py_lower(to_str(v)));
  if (name == "title") return Value::of(jinja_title(to_str(v)));
  if (name == "capitalize") return Value::of(py_capitalize(to_str(v)));
  if (name == "replace") {
    return Value::of(py_replace(to_str(v), args.str(0, "old", pos), args.str(1, "new", pos),
                                args.integer(2, "count", -1, pos)));
  }
  if (name == "indent") {
    const int64_t width = args.integer(0, "width", 4, pos);
    check_size(static_cast<uint64_t>(std::max<int64_t>(width, 0)), pos);
    const bool first = truthy(args.get(1, "first"));
    const bool blank = truthy(args.get(2, "blank"));
    const std::string pad(static_cast<size_t>(width < 0 ? 0 : width), ' ');
    const std::string s = to_str(v);
    std::string out;
    size_t start = 0;
    for (bool is_first = true; start <= s.size(); is_first = false) {
      const size_t nl = s.find('\n', start);
      const std::string line =
          s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      if ((is_first ? first : true) && (blank || !py_strip(line, true, true).empty())) out += pad;
      out += line;
      check_size(out.size(), pos);
      if (nl == std::string::npos) break;
      out += '\n';
      start = nl + 1;
    }
    return Value::of(out);
  }
  if (name == "int" || name == "float") {
    const bool want_int = name == "int";
    const Value fallback = args.get(0, "default");
    const Json def = fallback.is_data() ? fallback.json() : (want_int ? Json(0) : Json(0.0));
    if (!v.is_data()) return Value::of(def);
    const Json& j = v.json();
    if (j.is_boolean())
      return Value::of(want_int ? Json(int64_t{j.get<bool>()}) : Json(j.get<bool>() ? 1.0 : 0.0));
    if (j.is_number())
      return Value::of(want_int ? Json(static_cast<int64_t>(j.get<double>()))
                                : Json(j.get<double>()));
    if (!j.is_string()) return Value::of(def);
    const std::string s = py_strip(j.get<std::string>(), true, true);
    try {
      size_t used = 0;
      if (want_int) {
        const long long n = std::stoll(s, &used, 10);
        if (used == s.size()) return Value::of(static_cast<int64_t>(n));
        const double d = std::stod(s, &used);  // jinja2's int filter also accepts "3.7"
        if (used == s.size()) return Value::of(static_cast<int64_t>(d));
      } else {
        const double d = std::stod(s, &used);
        if (used == s.size()) return Value::of(d);
      }
    } catch (const std::exception&) {
    }
    return Value::of(def);
  }
  if (name == "abs") {
    if (!v.is_data() || !v.json().is_number())
      fail(pos, "bad operand type for abs(): '" + type_name(v) + "'");
    const Json& j = v.json();
    return j.is_number_float() ? Value::of(std::abs(j.get<double>()))
                               : Value::of(std::abs(j.get<int64_t>()));
  }
  if (name == "items") {
    Json out = Json::array();
    if (v.is_undefined()) return Value::of(out);
    if (!v.is_data() || !v.json().is_object())
      fail(pos, "items filter expects a mapping, not " + type_name(v));
    for (auto it = v.json().begin(); it != v.json().end(); ++it)
      out.push_back(Json::array({it.key(), it.value()}));
    return Value::of(std::move(out));
  }
  // jinja2's select/reject/map yield nothing for a falsy input (none included) instead of failing.
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    return truthy(v) ? select_items(name, v, args, pos) : Value::of(Json::array());
  }
  if (name == "map" && !truthy(v)) return Value::of(Json::array());
  // The remaining filters work on the items of a sequence.
  std::vector<Value> items = iterate(v, pos);
  auto to_array = [](const std::vector<Value>& vs) {
    Json out = Json::array();
    for (const auto& x : vs) out.push_back(x.is_data() ? x.json() : Json());
    return out;
  };
  if (name == "first" || name == "last") {
    if (items.empty()) return Value::undefined(name + " item of an empty sequence");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::of(to_array(items));
  if (name == "reverse") {
    if (v.is_data() && v.json().is_string()) {
      std::string out;
      for (auto it = items.rbegin(); it != items.rend(); ++it) out += it->json().get<std::string>();
      return Value::of(out);
    }
    return Value::of(to_array(std::vector<Value>(items.rbegin(), items.rend())));
  }
  if (name == "unique") {
    std::vector<Value> out;
    for (const auto& x : items) {
      bool seen = false;
      for (const auto& y : out) seen = seen || equals(x, y);
      if (!seen) out.push_back(x);
    }
    return Value::of(to_array(out));
  }
  if (name == "join") {
    const Value sep = args.get(0, "d");
    const Value attr = args.get(1, "attribute");
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += to_str(sep);
      out += to_str(attr.is_undefined() ? items[i] : attribute_of(items[i], to_str(attr)));
    }
    return Value::of(out);
  }
  if (name == "map") {
    const Value attr = args.get(99, "attribute");
    std::vector<Value> out;
    for (const auto& x : items) {
      if (!attr.is_undefined()) {
        const Value got = attribute_of(x, to_str(attr));
        out.push_back(got.is_undefined() ? args.get(99, "default") : got);
      } else {
        const std::string filter = args.str(0, "filter", pos);
        if (!is_known_filter(filter)) fail(pos, "no filter named '" + filter + "'");
        out.push_back(apply_filter(filter, x, args.drop(1), pos));
      }
    }
    return Value::of(to_array(out));
  }
  fail(pos, "no filter named '" + name + "'");
}

}  // namespace peft::detail::jinja
