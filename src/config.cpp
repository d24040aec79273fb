// adapter_config.json <-> LoraConfig. Every key PEFT writes is mapped in one table (kLoraFields
// below); the sub-configs have their own small tables built the same way. Validation lives in
// config_validate.cpp.
#include "peft/config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "peft/error.h"

namespace peft {
namespace {

// ordered_json keeps the file's key order: in rank_pattern / alpha_pattern the first match wins.
using OJson = nlohmann::ordered_json;

constexpr const char* kComponent = "LoraConfig";

// --- error reporting -----------------------------------------------------------------------------

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
    std::string message = source_ + ": ";
    if (errors_.size() == 1) {
      message += errors_[0];
    } else {
      message += std::to_string(errors_.size()) + " invalid values: ";
      for (size_t i = 0; i < errors_.size(); ++i) {
        message += (i ? "; " : "") + std::to_string(i + 1) + ") " + errors_[i];
      }
    }
    throw ConfigError(kComponent, message);
  }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

// --- enum spellings ------------------------------------------------------------------------------

constexpr std::array<std::pair<TaskType, const char*>, 6> kTaskTypes{{
    {TaskType::kSeqCls, "SEQ_CLS"},
    {TaskType::kSeq2SeqLm, "SEQ_2_SEQ_LM"},
    {TaskType::kCausalLm, "CAUSAL_LM"},
    {TaskType::kTokenCls, "TOKEN_CLS"},
    {TaskType::kQuestionAns, "QUESTION_ANS"},
    {TaskType::kFeatureExtraction, "FEATURE_EXTRACTION"},
}};

constexpr std::array<std::pair<Bias, const char*>, 3> kBiases{{
    {Bias::kNone, "none"},
    {Bias::kAll, "all"},
    {Bias::kLoraOnly, "lora_only"},
}};

using InitKind = InitLoraWeights::Kind;

// Canonical spellings of the string-valued init methods (PEFT's Literal values).
constexpr std::array<std::pair<InitKind, const char*>, 9> kInitNames{{
    {InitKind::kGaussian, "gaussian"},
    {InitKind::kEva, "eva"},
    {InitKind::kOlora, "olora"},
    {InitKind::kPissa, "pissa"},
    {InitKind::kCorda, "corda"},
    {InitKind::kLoftq, "loftq"},
    {InitKind::kOrthogonal, "orthogonal"},
    {InitKind::kMica, "mica"},
    {InitKind::kLoraGa, "lora_ga"},
}};

constexpr const char* kPissaNiterPrefix = "pissa_niter_";

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string canonical_init_spelling(InitKind kind, int niter) {
  if (kind == InitKind::kPissa && niter > 0) return kPissaNiterPrefix + std::to_string(niter);
  for (const auto& [k, name] : kInitNames) {
    if (k == kind) return name;
  }
  return kind == InitKind::kFalse ? "false" : "true";
}

// Returns the parsed value or the error message (without key context).
std::variant<InitLoraWeights, std::string> init_from_string(const std::string& s) {
  InitLoraWeights w;
  const std::string low = lower(s);
  bool found = false;
  // PEFT compares these three case-insensitively (init_lora_weights.lower() == ...).
  for (InitKind k : {InitKind::kGaussian, InitKind::kEva, InitKind::kOlora}) {
    if (low == canonical_init_spelling(k, 0)) {
      w.kind = k;
      found = true;
    }
  }
  for (InitKind k : {InitKind::kPissa, InitKind::kCorda, InitKind::kLoftq, InitKind::kOrthogonal,
                     InitKind::kMica, InitKind::kLoraGa}) {
    if (s == canonical_init_spelling(k, 0)) {
      w.kind = k;
      found = true;
    }
  }
  if (!found && s.rfind(kPissaNiterPrefix, 0) == 0) {
    const std::string digits = s.substr(std::strlen(kPissaNiterPrefix));
    const bool all_digits =
        !digits.empty() && digits.size() <= 9 &&
        std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c); });
    const int niter = all_digits ? std::stoi(digits) : 0;
    if (niter <= 0) {
      return "invalid init_lora_weights \"" + s +
             "\": N of \"pissa_niter_N\" must be a positive integer";
    }
    w.kind = InitKind::kPissa;
    w.niter = niter;
    found = true;
  }
  if (!found) {
    std::string accepted = "true, false";
    for (const auto& [k, name] : kInitNames) {
      accepted += std::string(", \"") + name + "\"";
      if (k == InitKind::kPissa) accepted += ", \"pissa_niter_<N>\"";
    }
    return "invalid init_lora_weights \"" + s + "\"; expected one of " + accepted +
           " (\"gaussian\", \"eva\" and \"olora\" in any case)";
  }
  if (s != canonical_init_spelling(w.kind, w.niter)) w.spelling = s;
  return w;
}

std::optional<TaskType> task_type_from(const std::string& s) {
  for (const auto& [t, name] : kTaskTypes) {
    if (s == name) return t;
  }
  return std::nullopt;
}

std::string task_type_error(const std::string& s) {
  std::string accepted;
  for (const auto& [t, name] : kTaskTypes) {
    if (!accepted.empty()) accepted += ", ";
    accepted += name;
  }
  return "Invalid task type: '" + s + "'. Must be one of the following task types: " + accepted +
         ".";
}

std::optional<Bias> bias_from(const std::string& s) {
  for (const auto& [b, name] : kBiases) {
    if (s == name) return b;
  }
  return std::nullopt;
}

std::string bias_error(const std::string& s) {
  // PEFT raises NotImplementedError with this text at injection time; we refuse at parse time.
  return "Requested bias: " + s +
         ", is not implemented; expected one of \"none\", \"all\", \"lora_only\"";
}

// --- reading values (one overload per C++ field type) --------------------------------------------

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

void read_value(Reader& rd, const OJson& v, const std::string& key, TaskType& out) {
  if (!v.is_string()) return rd.mismatch(key, v, "a string");
  const auto t = task_type_from(v.get<std::string>());
  if (!t) return rd.error("`" + key + "`: " + task_type_error(v.get<std::string>()));
  out = *t;
}

void read_value(Reader& rd, const OJson& v, const std::string& key, Bias& out) {
  if (!v.is_string()) return rd.mismatch(key, v, "a string");
  const auto b = bias_from(v.get<std::string>());
  if (!b) return rd.error("`" + key + "`: " + bias_error(v.get<std::string>()));
  out = *b;
}

void read_value(Reader& rd, const OJson& v, const std::string& key, InitLoraWeights& out) {
  if (v.is_boolean()) {
    out = InitLoraWeights{.kind = v.get<bool>() ? InitKind::kTrue : InitKind::kFalse};
    return;
  }
  if (!v.is_string()) return rd.mismatch(key, v, "a boolean or a string");
  auto parsed = init_from_string(v.get<std::string>());
  if (auto* message = std::get_if<std::string>(&parsed)) {
    return rd.error("`" + key + "`: " + *message);
  }
  out = std::get<InitLoraWeights>(parsed);
}

void read_value(Reader& /*rd*/, const OJson& v, const std::string& /*key*/, RawJson& out) {
  out.text = v.dump();
}

// {pattern: value} objects, in file order.
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
// A double field is written as a float (0.0), as Python writes a float field.
OJson write_value(double d) { return d; }
OJson write_value(const std::string& s) { return s; }
OJson write_value(TaskType t) { return to_string(t); }
OJson write_value(Bias b) { return to_string(b); }

// PEFT declares lora_alpha (and the alpha_pattern values, stable_gamma) as int: integral values are
// written as integers, so "lora_alpha": 16 round-trips as 16 and 16.5 stays 16.5.
OJson int_if_integral(double d) {
  if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 1e15) return static_cast<int64_t>(d);
  return d;
}

OJson write_value(const InitLoraWeights& w) {
  if (w.kind == InitKind::kTrue) return true;
  if (w.kind == InitKind::kFalse) return false;
  return to_string(w);
}

OJson write_value(const RawJson& raw) {
  // PEFT's sort_keys=True sorts nested objects too; nlohmann::json (a std::map) gives that order.
  try {
    return OJson::parse(nlohmann::json::parse(raw.text).dump());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(kComponent,
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

// Sub-configs are defined further down (their tables use the templates below); declared here so
// that the templates see them at their definition.
void read_value(Reader& rd, const OJson& v, const std::string& key, LoftQConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, EvaConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, CordaConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAConfig& out);
void read_value(Reader& rd, const OJson& v, const std::string& key, ArrowConfig& out);
OJson write_value(const LoftQConfig& c);
OJson write_value(const EvaConfig& c);
OJson write_value(const CordaConfig& c);
OJson write_value(const LoraGAConfig& c);
OJson write_value(const ArrowConfig& c);

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
    warn(kComponent, rd.source() + ": unexpected keys " + python_list(unknown) + " in `" + key +
                         "` are ignored");
  }
}

const auto kLoftqFields = std::to_array({
    PEFT_JSON_FIELD(LoftQConfig, loftq_bits),
    PEFT_JSON_FIELD(LoftQConfig, loftq_iter),
});

const auto kEvaFields = std::to_array({
    PEFT_JSON_FIELD(EvaConfig, rho),
    PEFT_JSON_FIELD(EvaConfig, tau),
    PEFT_JSON_FIELD(EvaConfig, use_label_mask),
    PEFT_JSON_FIELD(EvaConfig, label_mask_value),
    PEFT_JSON_FIELD(EvaConfig, whiten),
    PEFT_JSON_FIELD(EvaConfig, adjust_scaling_factors),
});

const auto kCordaFields = std::to_array({
    PEFT_JSON_FIELD(CordaConfig, cache_file),
    PEFT_JSON_FIELD(CordaConfig, covariance_file),
    PEFT_JSON_FIELD(CordaConfig, corda_method),
    PEFT_JSON_FIELD(CordaConfig, verbose),
    PEFT_JSON_FIELD(CordaConfig, use_float16_for_covariance),
    PEFT_JSON_FIELD(CordaConfig, prune_temporary_fields),
});

const auto kLoraGaFields = std::to_array({
    PEFT_JSON_FIELD(LoraGAConfig, direction),
    PEFT_JSON_FIELD(LoraGAConfig, scale),
    FieldSpec<LoraGAConfig>{"stable_gamma",
                            [](Reader& rd, const OJson& v, const std::string& k, LoraGAConfig& s) {
                              read_value(rd, v, k, s.stable_gamma);
                            },
                            [](const LoraGAConfig& s) { return int_if_integral(s.stable_gamma); }},
});

// PEFT's asdict() also writes the non-init adapter name lists (None until Arrow fills them).
OJson write_names_or_null(const std::vector<std::string>& names) {
  return names.empty() ? OJson(nullptr) : write_value(names);
}

void read_names_or_null(Reader& rd, const OJson& v, const std::string& k,
                        std::vector<std::string>& out) {
  out.clear();
  if (!v.is_null()) read_value(rd, v, k, out);
}

const auto kArrowFields = std::to_array({
    PEFT_JSON_FIELD(ArrowConfig, top_k),
    PEFT_JSON_FIELD(ArrowConfig, router_temperature),
    PEFT_JSON_FIELD(ArrowConfig, use_gks),
    PEFT_JSON_FIELD(ArrowConfig, rng_seed),
    FieldSpec<ArrowConfig>{
        "task_adapter_names",
        [](Reader& rd, const OJson& v, const std::string& k, ArrowConfig& s) {
          read_names_or_null(rd, v, k, s.task_adapter_names);
        },
        [](const ArrowConfig& s) { return write_names_or_null(s.task_adapter_names); }},
    FieldSpec<ArrowConfig>{
        "gks_adapter_names",
        [](Reader& rd, const OJson& v, const std::string& k, ArrowConfig& s) {
          read_names_or_null(rd, v, k, s.gks_adapter_names);
        },
        [](const ArrowConfig& s) { return write_names_or_null(s.gks_adapter_names); }},
});

void read_value(Reader& rd, const OJson& v, const std::string& key, LoftQConfig& out) {
  read_struct(rd, v, key, kLoftqFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, EvaConfig& out) {
  read_struct(rd, v, key, kEvaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, CordaConfig& out) {
  read_struct(rd, v, key, kCordaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAConfig& out) {
  read_struct(rd, v, key, kLoraGaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, ArrowConfig& out) {
  read_struct(rd, v, key, kArrowFields, out);
}

OJson write_value(const LoftQConfig& c) { return write_struct(c, kLoftqFields); }
OJson write_value(const EvaConfig& c) { return write_struct(c, kEvaFields); }
OJson write_value(const CordaConfig& c) { return write_struct(c, kCordaFields); }
OJson write_value(const LoraGAConfig& c) { return write_struct(c, kLoraGaFields); }
OJson write_value(const ArrowConfig& c) { return write_struct(c, kArrowFields); }

// The 41 keys of adapter_config.json (PEFT 0.20.1.dev0), in LoraConfig declaration order.
const auto kLoraFields = std::to_array({
    PEFT_JSON_FIELD(LoraConfig, peft_type),  // checked before the table is used
    PEFT_JSON_FIELD(LoraConfig, task_type),
    PEFT_JSON_FIELD(LoraConfig, base_model_name_or_path),
    PEFT_JSON_FIELD(LoraConfig, revision),
    PEFT_JSON_FIELD(LoraConfig, inference_mode),
    PEFT_JSON_FIELD(LoraConfig, auto_mapping),
    PEFT_JSON_FIELD(LoraConfig, peft_version),
    PEFT_JSON_FIELD(LoraConfig, r),
    PEFT_JSON_FIELD(LoraConfig, target_modules),
    PEFT_JSON_FIELD(LoraConfig, exclude_modules),
    FieldSpec<LoraConfig>{"lora_alpha",
                          [](Reader& rd, const OJson& v, const std::string& k, LoraConfig& s) {
                            read_value(rd, v, k, s.lora_alpha);
                          },
                          [](const LoraConfig& s) { return int_if_integral(s.lora_alpha); }},
    PEFT_JSON_FIELD(LoraConfig, lora_dropout),
    PEFT_JSON_FIELD(LoraConfig, fan_in_fan_out),
    PEFT_JSON_FIELD(LoraConfig, bias),
    PEFT_JSON_FIELD(LoraConfig, use_rslora),
    PEFT_JSON_FIELD(LoraConfig, modules_to_save),
    PEFT_JSON_FIELD(LoraConfig, init_lora_weights),
    PEFT_JSON_FIELD(LoraConfig, layers_to_transform),
    PEFT_JSON_FIELD(LoraConfig, layers_pattern),
    PEFT_JSON_FIELD(LoraConfig, rank_pattern),
    PEFT_JSON_FIELD(LoraConfig, alpha_pattern),
    PEFT_JSON_FIELD(LoraConfig, megatron_config),
    PEFT_JSON_FIELD(LoraConfig, megatron_core),
    PEFT_JSON_FIELD(LoraConfig, trainable_token_indices),
    // PEFT's default is {} (an empty dict), held as nullopt: {} in -> nullopt -> {} out.
    FieldSpec<LoraConfig>{"loftq_config",
                          [](Reader& rd, const OJson& v, const std::string& k, LoraConfig& s) {
                            if (v.is_null() || (v.is_object() && v.empty())) {
                              s.loftq_config.reset();
                            } else {
                              read_value(rd, v, k, s.loftq_config);
                            }
                          },
                          [](const LoraConfig& s) {
                            return s.loftq_config ? write_value(*s.loftq_config) : OJson::object();
                          }},
    PEFT_JSON_FIELD(LoraConfig, eva_config),
    PEFT_JSON_FIELD(LoraConfig, corda_config),
    PEFT_JSON_FIELD(LoraConfig, lora_ga_config),
    PEFT_JSON_FIELD(LoraConfig, use_dora),
    PEFT_JSON_FIELD(LoraConfig, velora_config),
    PEFT_JSON_FIELD(LoraConfig, alora_invocation_tokens),
    PEFT_JSON_FIELD(LoraConfig, use_qalora),
    PEFT_JSON_FIELD(LoraConfig, qalora_group_size),
    PEFT_JSON_FIELD(LoraConfig, monteclora_config),
    PEFT_JSON_FIELD(LoraConfig, layer_replication),
    PEFT_JSON_FIELD(LoraConfig, lora_bias),
    // A bare regex string is the shape users get wrong; PEFT raises its own TypeError for it.
    FieldSpec<LoraConfig>{"target_parameters",
                          [](Reader& rd, const OJson& v, const std::string& k, LoraConfig& s) {
                            if (v.is_string()) {
                              rd.error("`target_parameters` must be a list of strings or None.");
                            } else {
                              read_value(rd, v, k, s.target_parameters);
                            }
                          },
                          [](const LoraConfig& s) { return write_value(s.target_parameters); }},
    PEFT_JSON_FIELD(LoraConfig, use_bdlora),
    PEFT_JSON_FIELD(LoraConfig, arrow_config),
    PEFT_JSON_FIELD(LoraConfig, kasa_config),
    PEFT_JSON_FIELD(LoraConfig, ensure_weight_tying),
});
static_assert(kLoraFields.size() == 41);

#undef PEFT_JSON_FIELD

// PEFT <= 0.20.0 had no KaSA and so never wrote `kasa_config`. Returns false when peft_version
// names such a release ("0.20.0", "0.19.1", "0.20.0rc1"); true for newer, dev ("0.20.1.dev0@abc")
// and unknown versions.
bool version_writes_kasa(const std::optional<std::string>& peft_version) {
  if (!peft_version) return true;
  std::array<long, 3> parts{};
  const char* p = peft_version->c_str();
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(*p))) return true;
    char* end = nullptr;
    parts[i] = std::strtol(p, &end, 10);
    p = end;
    if (i + 1 < parts.size()) {
      if (*p != '.') return true;
      ++p;
    }
  }
  return parts > std::array<long, 3>{0, 20, 0};
}

}  // namespace

// --- public API ----------------------------------------------------------------------------------

bool RawJson::operator==(const RawJson& other) const {
  if (text == other.text) return true;
  try {
    return nlohmann::json::parse(text) == nlohmann::json::parse(other.text);
  } catch (const nlohmann::json::exception&) {
    return false;  // unequal texts of which one is not JSON cannot hold the same value
  }
}

std::string to_string(TaskType t) {
  for (const auto& [k, name] : kTaskTypes) {
    if (k == t) return name;
  }
  return "UNKNOWN";
}

std::string to_string(Bias b) {
  for (const auto& [k, name] : kBiases) {
    if (k == b) return name;
  }
  return "unknown";
}

std::string to_string(const InitLoraWeights& w) {
  if (!w.spelling.empty() && w.kind != InitKind::kTrue && w.kind != InitKind::kFalse)
    return w.spelling;
  return canonical_init_spelling(w.kind, w.niter);
}

TaskType parse_task_type(const std::string& s) {
  const auto t = task_type_from(s);
  if (!t) throw ConfigError(kComponent, task_type_error(s));
  return *t;
}

Bias parse_bias(const std::string& s) {
  const auto b = bias_from(s);
  if (!b) throw ConfigError(kComponent, bias_error(s));
  return *b;
}

InitLoraWeights parse_init_lora_weights(const std::string& s) {
  auto parsed = init_from_string(s);
  if (auto* message = std::get_if<std::string>(&parsed)) throw ConfigError(kComponent, *message);
  return std::get<InitLoraWeights>(parsed);
}

LoraConfig lora_config_from_json_text(const std::string& json_text, const std::string& source) {
  OJson root;
  try {
    root = OJson::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(kComponent, source + ": invalid JSON: " + e.what());
  }
  if (!root.is_object()) {
    throw FormatError(kComponent, source + ": expected a JSON object, found " + describe(root));
  }

  const auto peft_type = root.find("peft_type");
  if (peft_type == root.end()) {
    throw ConfigError(kComponent,
                      "The LoraConfig config that is trying to be loaded is missing required keys: "
                      "{'peft_type'}. (in " +
                          source + ")");
  }
  if (!peft_type->is_string()) {
    throw ConfigError(kComponent,
                      source + ": `peft_type`: expected a string, found " + describe(*peft_type));
  }
  if (peft_type->get<std::string>() != "LORA") {
    throw UnsupportedError(kComponent,
                           source + ": peft_type \"" + peft_type->get<std::string>() +
                               "\" is not supported; peft.cpp implements \"LORA\" only");
  }

  Reader rd(source);
  LoraConfig config;
  std::vector<std::string> unknown;
  for (const auto& item : root.items()) {
    if (item.key() == "runtime_config") {
      warn(kComponent,
           source +
               ": `runtime_config` is ignored: runtime settings are never saved with an adapter");
      continue;
    }
    const auto field =
        std::find_if(kLoraFields.begin(), kLoraFields.end(),
                     [&](const FieldSpec<LoraConfig>& f) { return item.key() == f.key; });
    if (field == kLoraFields.end()) {
      unknown.push_back(item.key());
    } else {
      field->read(rd, item.value(), item.key(), config);
    }
  }
  if (!unknown.empty()) {
    warn(kComponent,
         "Unexpected keyword arguments " + python_list(unknown) +
             " for class LoraConfig, these are ignored. This probably means that you're loading a "
             "configuration file that was saved using a higher version of the library and "
             "additional "
             "parameters have been introduced since. (in " +
             source + ")");
  }
  rd.throw_if_errors();
  return config;
}

std::string lora_config_to_json_text(const LoraConfig& config, int indent) {
  OJson root = write_struct(config, kLoraFields);
  if (!config.kasa_config && !version_writes_kasa(config.peft_version)) root.erase("kasa_config");
  // ensure_ascii matches Python's json.dumps default, so non-ASCII names are written as \uXXXX like
  // PEFT does.
  return root.dump(indent, ' ', /*ensure_ascii=*/true);
}

LoraConfig load_lora_config(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw FormatError(
        kComponent,
        "cannot read adapter config \"" + path +
            "\": " + (std::filesystem::exists(path, ec) ? "not a regular file" : "no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) {
    throw FormatError(kComponent,
                      "cannot read adapter config \"" + path + "\": " + std::strerror(errno));
  }
  LoraConfig config = lora_config_from_json_text(text.str(), path);
  config.validate();
  return config;
}

void save_lora_config(const LoraConfig& config, const std::string& path) {
  const std::string text = lora_config_to_json_text(config, 2);
  // Write next to the target and rename, so a crash never leaves a half-written adapter_config.json
  // behind.
  const std::string tmp = path + ".tmp-" + std::to_string(std::random_device{}());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw FormatError(kComponent,
                        "cannot write adapter config \"" + path + "\": " + std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw FormatError(kComponent, "cannot write adapter config \"" + path + "\": " + ec.message());
  }
}

}  // namespace peft
