// The JSON edge of LoraConfig (private to src/config): a Reader that collects every problem of a
// document, one read_value / write_value overload per C++ field type, and the key tables
// (FieldSpec) that map a struct to its JSON keys. lora_config_json.cpp holds the tables; enums.cpp
// the enum spellings.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "../strings.h"
#include "peft/config.h"
#include "peft/error.h"

namespace peft::detail {

// ordered_json keeps the file's key order: in rank_pattern / alpha_pattern the first match wins.
using OJson = nlohmann::ordered_json;

inline constexpr const char* kConfigComponent = "LoraConfig";

// `string "eight"`: type and short text of a value, for "expected X, found Y" messages.
std::string describe(const OJson& v);
// Python's repr of a list of strings, as PEFT prints key lists: ['a', 'b'].
std::string python_list(const std::vector<std::string>& items);

// Collects every problem of a document: a file with three bad values fails once, naming all three.
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  void mismatch(const std::string& key, const OJson& v, const std::string& expected) {
    errors_.push_back("`" + key + "`: expected " + expected + ", found " + describe(v));
  }
  void error(std::string message) { errors_.push_back(std::move(message)); }
  const std::string& source() const { return source_; }

  void throw_if_errors() const {
    if (errors_.empty()) return;
    throw ConfigError(kConfigComponent, source_ + ": " + numbered_list(errors_, "invalid values"));
  }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

// --- reading values (one overload per C++ field type; json_io.cpp, enums in enums.cpp)
// ------------

void read_value(Reader& rd, const OJson& v, const std::string& key, bool& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, int64_t& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, int& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, double& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, std::string& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, std::vector<std::string>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, std::vector<int64_t>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, StrOrList& out);
void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::variant<int64_t, std::vector<int64_t>>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, RawJson& out);
void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<std::string, int>>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<std::string, double>>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, TrainableTokenIndices& out);
void read_value(Reader& rd, const OJson& v, const std::string& key,
                std::vector<std::pair<int64_t, int64_t>>& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, TaskType& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, Bias& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, InitLoraWeights& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, CordaMethod& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGADirection& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAScale& out);
// Sub-configs (lora_config_json.cpp).
void read_value(Reader& rd, const OJson& v, const std::string& key, LoftQConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, EvaConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, CordaConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, ArrowConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, BdLoraConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, VeloraConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, MontecloraConfig& out);

template <class T>
void read_value(Reader& rd, const OJson& v, const std::string& key, std::optional<T>& out) {
  if (v.is_null()) {
    out.reset();
    return;
  }
  T value{};
  read_value(rd, v, key, value);
  out = std::move(value);
}

// --- writing values ------------------------------------------------------------------------------

OJson write_value(bool b);
OJson write_value(int i);
OJson write_value(int64_t i);
OJson write_value(double d);  // written as a float (0.0), as Python writes a float field
OJson write_value(const std::string& s);
OJson write_value(const std::vector<std::string>& list);
OJson write_value(const std::vector<int64_t>& list);
OJson write_value(const StrOrList& v);
OJson write_value(const std::variant<int64_t, std::vector<int64_t>>& v);
OJson write_value(const RawJson& raw);
OJson write_value(const std::vector<std::pair<std::string, int>>& pairs);
OJson write_value(const std::vector<std::pair<std::string, double>>& pairs);
OJson write_value(const TrainableTokenIndices& v);
OJson write_value(const std::vector<std::pair<int64_t, int64_t>>& ranges);
OJson write_value(TaskType t);
OJson write_value(Bias b);
OJson write_value(const InitLoraWeights& w);
OJson write_value(CordaMethod m);
OJson write_value(LoraGADirection d);
OJson write_value(LoraGAScale s);
OJson write_value(const LoftQConfig& c);
OJson write_value(const EvaConfig& c);
OJson write_value(const CordaConfig& c);
OJson write_value(const LoraGAConfig& c);
OJson write_value(const ArrowConfig& c);
OJson write_value(const BdLoraConfig& c);
OJson write_value(const VeloraConfig& c);
OJson write_value(const MontecloraConfig& c);

// PEFT declares lora_alpha (and the alpha_pattern values, stable_gamma) as int: integral values are
// written as integers, so "lora_alpha": 16 round-trips as 16 and 16.5 stays 16.5.
OJson int_if_integral(double d);

template <class T>
OJson write_value(const std::optional<T>& v) {
  return v ? write_value(*v) : OJson(nullptr);
}

// --- key tables ----------------------------------------------------------------------------------

// One JSON key of a struct S: how to read it into S and how to write it from S.
template <class S>
struct FieldSpec {
  const char* key;
  void (*read)(Reader&, const OJson&, const std::string&, S&);
  OJson (*write)(const S&);
};

// The common case: the JSON key is the C++ field name and the overloads above do the work.
// clang-format off
#define PEFT_JSON_FIELD(S, name)                                                               \
  FieldSpec<S> {                                                                               \
    #name,                                                                                     \
    [](Reader& rd, const OJson& v, const std::string& k, S& s) { read_value(rd, v, k, s.name); }, \
    [](const S& s) { return write_value(s.name); }                                             \
  }
// A float field that PEFT declares as int (lora_alpha, stable_gamma): integral values written as integers.
#define PEFT_JSON_INT_FIELD(S, name)                                                           \
  FieldSpec<S> {                                                                               \
    #name,                                                                                     \
    [](Reader& rd, const OJson& v, const std::string& k, S& s) { read_value(rd, v, k, s.name); }, \
    [](const S& s) { return int_if_integral(s.name); }                                         \
  }
// clang-format on

// Keys are written sorted (json.dumps(sort_keys=True)) whatever the table order.
template <class S, size_t N>
OJson write_struct(const S& s, const std::array<FieldSpec<S>, N>& table) {
  std::vector<std::pair<std::string, OJson>> items;
  for (const auto& f : table) items.emplace_back(f.key, f.write(s));
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  OJson out = OJson::object();
  for (auto& [k, v] : items) out[k] = std::move(v);
  return out;
}

// Sub-configs: unknown keys are warned about and ignored, as at the top level.
template <class S, size_t N>
void read_struct(Reader& rd, const OJson& v, const std::string& key,
                 const std::array<FieldSpec<S>, N>& table, S& out) {
  if (!v.is_object()) return rd.mismatch(key, v, "an object");
  out = S{};
  std::vector<std::string> unknown;
  for (const auto& item : v.items()) {
    const auto it = std::find_if(table.begin(), table.end(),
                                 [&](const FieldSpec<S>& f) { return item.key() == f.key; });
    if (it == table.end()) {
      unknown.push_back(item.key());
    } else {
      it->read(rd, item.value(), key + "." + item.key(), out);
    }
  }
  if (!unknown.empty()) {
    warn(kConfigComponent, rd.source() + ": unexpected keys " + python_list(unknown) + " in `" +
                               key + "` are ignored");
  }
}

}  // namespace peft::detail
