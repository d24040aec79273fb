// The enums of LoraConfig at their string edge: one spelling table per enum (PEFT's spellings), the
// JSON readers and writers of those fields, and the public parse_* / to_string functions that the
// CLI shares.
#include <algorithm>
#include <cctype>
#include <cstring>

#include "../spellings.h"
#include "json_io.h"

namespace peft {
namespace detail {
namespace {

constexpr Spellings<TaskType, 6> kTaskTypes{{
    {TaskType::kSeqCls, "SEQ_CLS"},
    {TaskType::kSeq2SeqLm, "SEQ_2_SEQ_LM"},
    {TaskType::kCausalLm, "CAUSAL_LM"},
    {TaskType::kTokenCls, "TOKEN_CLS"},
    {TaskType::kQuestionAns, "QUESTION_ANS"},
    {TaskType::kFeatureExtraction, "FEATURE_EXTRACTION"},
}};

constexpr Spellings<Bias, 3> kBiases{{
    {Bias::kNone, "none"},
    {Bias::kAll, "all"},
    {Bias::kLoraOnly, "lora_only"},
}};

using InitKind = InitLoraWeights::Kind;

// Canonical spellings of the string-valued init methods (PEFT's Literal values).
constexpr Spellings<InitKind, 9> kInitNames{{
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

std::string task_type_error(const std::string& s) {
  std::string accepted;
  for (const auto& [t, name] : kTaskTypes) {
    if (!accepted.empty()) accepted += ", ";
    accepted += name;
  }
  return "Invalid task type: '" + s + "'. Must be one of the following task types: " + accepted +
         ".";
}

std::string bias_error(const std::string& s) {
  // PEFT raises NotImplementedError with this text at injection time; we refuse at parse time.
  return "Requested bias: " + s +
         ", is not implemented; expected one of \"none\", \"all\", \"lora_only\"";
}

constexpr Spellings<CordaMethod, 2> kCordaMethods{
    {{CordaMethod::kIpm, "ipm"}, {CordaMethod::kKpm, "kpm"}}};

constexpr Spellings<LoraGADirection, 4> kLoraGaDirections{{
    {LoraGADirection::kArB2r, "ArB2r"},
    {LoraGADirection::kA2rBr, "A2rBr"},
    {LoraGADirection::kArBr, "ArBr"},
    {LoraGADirection::kRandom, "random"},
}};

constexpr Spellings<LoraGAScale, 4> kLoraGaScales{{
    {LoraGAScale::kStable, "stable"},
    {LoraGAScale::kWeightSvd, "weight_svd"},
    {LoraGAScale::kGdScale, "gd_scale"},
    {LoraGAScale::kUnit, "unit"},
}};

// PEFT's own message (preprocess_corda raises it; the value is refused here when the config is
// read).
std::string corda_method_error(const std::string& s) {
  return "Invalid corda_method found: " + s + ", it should be 'ipm' or 'kpm'.";
}

std::string lora_ga_error(const char* field, const std::string& s, const std::string& accepted) {
  return std::string("lora_ga_config.") + field + " \"" + s +
         "\" is not supported; expected one of " + accepted;
}

// Reads a string-valued enum through `parse` (which returns nullopt for an unknown spelling) and
// reports `error(s)`.
template <class E, class Parse, class Message>
void read_enum(Reader& rd, const OJson& v, const std::string& key, E& out, Parse parse,
               Message error) {
  if (!v.is_string()) return rd.mismatch(key, v, "a string");
  const std::string s = v.get<std::string>();
  const std::optional<E> e = parse(s);
  if (!e) return rd.error("`" + key + "`: " + error(s));
  out = *e;
}

}  // namespace

void read_value(Reader& rd, const OJson& v, const std::string& key, TaskType& out) {
  read_enum(
      rd, v, key, out, [](const std::string& s) { return find_spelling(kTaskTypes, s); },
      task_type_error);
}

void read_value(Reader& rd, const OJson& v, const std::string& key, Bias& out) {
  read_enum(
      rd, v, key, out, [](const std::string& s) { return find_spelling(kBiases, s); }, bias_error);
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

void read_value(Reader& rd, const OJson& v, const std::string& key, CordaMethod& out) {
  read_enum(
      rd, v, key, out, [](const std::string& s) { return find_spelling(kCordaMethods, s); },
      corda_method_error);
}

void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGADirection& out) {
  read_enum(
      rd, v, key, out, [](const std::string& s) { return find_spelling(kLoraGaDirections, s); },
      [](const std::string& s) {
        return lora_ga_error("direction", s, accepted_spellings(kLoraGaDirections));
      });
}

void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAScale& out) {
  read_enum(
      rd, v, key, out, [](const std::string& s) { return find_spelling(kLoraGaScales, s); },
      [](const std::string& s) {
        return lora_ga_error("scale", s, accepted_spellings(kLoraGaScales));
      });
}

OJson write_value(TaskType t) { return to_string(t); }
OJson write_value(Bias b) { return to_string(b); }
OJson write_value(CordaMethod m) { return to_string(m); }
OJson write_value(LoraGADirection d) { return to_string(d); }
OJson write_value(LoraGAScale s) { return to_string(s); }

OJson write_value(const InitLoraWeights& w) {
  if (w.kind == InitKind::kTrue) return true;
  if (w.kind == InitKind::kFalse) return false;
  return to_string(w);
}

}  // namespace detail

using namespace detail;  // the spelling tables above

std::string to_string(TaskType t) { return spelling_of(kTaskTypes, t); }
std::string to_string(Bias b) { return spelling_of(kBiases, b); }
std::string to_string(CordaMethod m) { return spelling_of(kCordaMethods, m); }
std::string to_string(LoraGADirection d) { return spelling_of(kLoraGaDirections, d); }
std::string to_string(LoraGAScale s) { return spelling_of(kLoraGaScales, s); }

bool InitLoraWeights::mutates_base() const {
  return kind == Kind::kPissa || kind == Kind::kOlora || kind == Kind::kCorda ||
         kind == Kind::kLoraGa || kind == Kind::kLoftq;
}

bool InitLoraWeights::needs_data() const {
  return kind == Kind::kEva || kind == Kind::kCorda || kind == Kind::kLoraGa;
}

std::string to_string(const InitLoraWeights& w) {
  if (!w.spelling.empty() && w.kind != InitKind::kTrue && w.kind != InitKind::kFalse)
    return w.spelling;
  return canonical_init_spelling(w.kind, w.niter);
}

TaskType parse_task_type(const std::string& s) {
  const auto t = find_spelling(kTaskTypes, s);
  if (!t) throw ConfigError(kConfigComponent, task_type_error(s));
  return *t;
}

Bias parse_bias(const std::string& s) {
  const auto b = find_spelling(kBiases, s);
  if (!b) throw ConfigError(kConfigComponent, bias_error(s));
  return *b;
}

InitLoraWeights parse_init_lora_weights(const std::string& s) {
  auto parsed = init_from_string(s);
  if (auto* message = std::get_if<std::string>(&parsed))
    throw ConfigError(kConfigComponent, *message);
  return std::get<InitLoraWeights>(parsed);
}

CordaMethod parse_corda_method(const std::string& s) {
  const auto m = find_spelling(kCordaMethods, s);
  if (!m) throw ConfigError(kConfigComponent, corda_method_error(s));
  return *m;
}

LoraGADirection parse_lora_ga_direction(const std::string& s) {
  const auto d = find_spelling(kLoraGaDirections, s);
  if (!d)
    throw ConfigError(kConfigComponent,
                      lora_ga_error("direction", s, accepted_spellings(kLoraGaDirections)));
  return *d;
}

LoraGAScale parse_lora_ga_scale(const std::string& s) {
  const auto v = find_spelling(kLoraGaScales, s);
  if (!v)
    throw ConfigError(kConfigComponent,
                      lora_ga_error("scale", s, accepted_spellings(kLoraGaScales)));
  return *v;
}

}  // namespace peft
