// The JSON value readers and writers of LoraConfig's field types (PEFT's Python types: bool, int,
// float, str, lists, dicts of patterns, Optional[...]); every problem goes to the Reader, which
// reports them all at once.
#include "json_io.h"

#include <cmath>
#include <limits>

namespace peft::detail {
namespace {

std::string json_type(const OJson& v) {
  switch (v.type()) {
    case OJson::value_t::null:
      return "null";
    case OJson::value_t::boolean:
      return "boolean";
    case OJson::value_t::number_integer:
    case OJson::value_t::number_unsigned:
      return "integer";
    case OJson::value_t::number_float:
      return "float";
    case OJson::value_t::string:
      return "string";
    case OJson::value_t::array:
      return "list";
    case OJson::value_t::object:
      return "object";
    default:
      return "value";
  }
}

std::optional<int64_t> as_int64(const OJson& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  // Python's json writes 8.0 for a float that holds an integer; accept it where PEFT would.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e18) {
      return static_cast<int64_t>(d);
    }
  }
  return std::nullopt;
}

template <class V>
void read_pairs(Reader& rd, const OJson& v, const std::string& key, const std::string& expected,
                std::vector<std::pair<std::string, V>>& out) {
  out.clear();
  if (!v.is_object()) return rd.mismatch(key, v, expected);
  for (const auto& item : v.items()) {
    V value{};
    read_value(rd, item.value(), key + "[\"" + item.key() + "\"]", value);
    out.emplace_back(item.key(), std::move(value));
  }
}

}  // namespace

// `string "eight"`: type and short text of a value, for "expected X, found Y" messages.
std::string describe(const OJson& v) {
  if (v.is_null()) return "null";
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return json_type(v) + " " + text;
}

// Python's repr of a list of strings, as PEFT prints key lists: ['a', 'b'].
std::string python_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

void read_value(Reader& rd, const OJson& v, const std::string& key, bool& out) {
  if (!v.is_boolean()) return rd.mismatch(key, v, "a boolean");
  out = v.get<bool>();
}

void read_value(Reader& rd, const OJson& v, const std::string& key, int64_t& out) {
  const auto i = as_int64(v);
  if (!i) return rd.mismatch(key, v, "an integer");
  out = *i;
}

void read_value(Reader& rd, const OJson& v, const std::string& key, int& out) {
  const auto i = as_int64(v);
  if (!i) return rd.mismatch(key, v, "an integer");
  if (*i < std::numeric_limits<int>::min() || *i > std::numeric_limits<int>::max()) {
    return rd.mismatch(key, v, "an integer in 32-bit range");
  }
  out = static_cast<int>(*i);
}

void read_value(Reader& rd, const OJson& v, const std::string& key, double& out) {
  if (!v.is_number()) return rd.mismatch(key, v, "a number");
  out = v.get<double>();
}

void read_value(Reader& rd, const OJson& v, const std::string& key, std::string& out) {
  if (!v.is_string()) return rd.mismatch(key, v, "a string");
  out = v.get<std::string>();
}

void read_value(Reader& rd, const OJson& v, const std::string& key, std::vector<std::string>& out) {
  if (!v.is_array()) return rd.mismatch(key, v, "a list of strings");
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    std::string item;
    read_value(rd, v[i], key + "[" + std::to_string(i) + "]", item);
    out.push_back(std::move(item));
  }
}

void read_value(Reader& rd, const OJson& v, const std::string& key, std::vector<int64_t>& out) {
  if (!v.is_array()) return rd.mismatch(key, v, "a list of integers");
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    int64_t item = 0;
    read_value(rd, v[i], key + "[" + std::to_string(i) + "]", item);
    out.push_back(item);
  }
}

void read_value(Reader& rd, const OJson& v, const std::string& key, StrOrList& out) {
  if (v.is_string()) {
    out = v.get<std::string>();
  } else if (v.is_array()) {
    std::vector<std::string> list;
    read_value(rd, v, key, list);
    out = std::move(list);
  } else {
    rd.mismatch(key, v, "a string or a list of strings");
  }
}

void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::variant<int64_t, std::vector<int64_t>>& out) {
  if (v.is_array()) {
    std::vector<int64_t> list;
    read_value(rd, v, key, list);
    out = std::move(list);
  } else if (const auto i = as_int64(v); i && !v.is_boolean()) {
    out = *i;
  } else {
    rd.mismatch(key, v, "an integer or a list of integers");
  }
}

void read_value(Reader& /*rd*/, const OJson& v, const std::string& /*key*/, RawJson& out) {
  out.text = v.dump();
}

void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<std::string, int>>& out) {
  if (v.is_null()) return out.clear();  // PEFT's field is Optional[dict]; None behaves as {}
  read_pairs(rd, v, key, "an object {pattern: rank}", out);
}

void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<std::string, double>>& out) {
  if (v.is_null()) return out.clear();
  read_pairs(rd, v, key, "an object {pattern: alpha}", out);
}

void read_value(Reader& rd, const OJson& v, const std::string& key, TrainableTokenIndices& out) {
  if (v.is_array()) {
    std::vector<int64_t> list;
    read_value(rd, v, key, list);
    out = std::move(list);
  } else if (v.is_object()) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> map;
    read_pairs(rd, v, key, "an object {module: [token indices]}", map);
    out = std::move(map);
  } else {
    rd.mismatch(key, v, "a list of token indices or an object {module: [token indices]}");
  }
}

void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<int64_t, int64_t>>& out) {
  if (!v.is_array()) return rd.mismatch(key, v, "a list of [start, end] pairs");
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string item_key = key + "[" + std::to_string(i) + "]";
    if (!v[i].is_array() || v[i].size() != 2) {
      rd.mismatch(item_key, v[i], "a [start, end] pair");
      continue;
    }
    std::pair<int64_t, int64_t> range;
    read_value(rd, v[i][0], item_key + "[0]", range.first);
    read_value(rd, v[i][1], item_key + "[1]", range.second);
    out.push_back(range);
  }
}

// --- writing values ------------------------------------------------------------------------------

OJson write_value(bool b) { return b; }
OJson write_value(int i) { return i; }
OJson write_value(int64_t i) { return i; }
OJson write_value(double d) { return d; }
OJson write_value(const std::string& s) { return s; }

OJson int_if_integral(double d) {
  if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 1e15) return static_cast<int64_t>(d);
  return d;
}

OJson write_value(const RawJson& raw) {
  // PEFT's sort_keys=True sorts nested objects too; nlohmann::json (a std::map) gives that order.
  try {
    return OJson::parse(nlohmann::json::parse(raw.text).dump());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(kConfigComponent,
                      "RawJson holds invalid JSON text \"" + raw.text + "\": " + e.what());
  }
}

OJson write_value(const std::vector<std::string>& list) { return list; }
OJson write_value(const std::vector<int64_t>& list) { return list; }

OJson write_value(const StrOrList& v) {
  return std::visit([](const auto& x) { return write_value(x); }, v);
}

OJson write_value(const std::variant<int64_t, std::vector<int64_t>>& v) {
  return std::visit([](const auto& x) { return write_value(x); }, v);
}

// Pattern objects keep their order (it decides which pattern wins); PEFT's files are sorted.
OJson write_value(const std::vector<std::pair<std::string, int>>& pairs) {
  OJson out = OJson::object();
  for (const auto& [k, v] : pairs) out[k] = v;
  return out;
}

OJson write_value(const std::vector<std::pair<std::string, double>>& pairs) {
  OJson out = OJson::object();
  for (const auto& [k, v] : pairs) out[k] = int_if_integral(v);
  return out;
}

OJson write_value(const TrainableTokenIndices& v) {
  if (const auto* list = std::get_if<std::vector<int64_t>>(&v)) return *list;
  OJson out = OJson::object();
  for (const auto& [k, indices] : std::get<1>(v)) out[k] = indices;
  return out;
}

OJson write_value(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  OJson out = OJson::array();
  for (const auto& [start, end] : ranges) out.push_back(OJson::array({start, end}));
  return out;
}

}  // namespace peft::detail
