// Target matching: which modules get LoRA and with which r / alpha. Mirrors PEFT 0.20's
// check_target_module_exists, inject_adapter's error outcomes, _maybe_include_all_linear_layers
// (src/peft/tuners/tuners_utils.py) and get_pattern_key (src/peft/utils/other.py).
#include "peft/targeting.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "peft/error.h"
#include "strings.h"

namespace peft {
namespace detail {
namespace {  // internal linkage: other files may have their own detail helpers

// Python's repr() of a str, so that messages read exactly like PEFT's ({'q_proj', 'v_proj'}).
std::string py_repr(const std::string& s) { return detail::python_str_repr(s); }

// PEFT turns list-valued target_modules / exclude_modules into sets in __post_init__, so its
// messages print them as sets. Python's set order is hash order; we keep the order given (minus
// duplicates).
std::string py_set_repr(const std::vector<std::string>& items) {
  std::vector<std::string> unique;
  for (const auto& item : items) {
    if (std::find(unique.begin(), unique.end(), item) == unique.end()) unique.push_back(item);
  }
  if (unique.empty()) return "set()";
  std::string out = "{";
  for (size_t i = 0; i < unique.size(); ++i) out += (i ? ", " : "") + py_repr(unique[i]);
  return out + "}";
}

std::string py_list_repr(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + py_repr(items[i]);
  return out + "]";
}

// str(value) of target_modules / exclude_modules as PEFT's f-strings print them: a str verbatim, a
// set as a set.
std::string format_str_or_set(const StrOrList& value) {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  return py_set_repr(std::get<std::vector<std::string>>(value));
}

// Python truthiness of a str-or-list option: None, "" and [] are all "not set".
bool truthy(const std::optional<StrOrList>& value) {
  if (!value) return false;
  if (const auto* s = std::get_if<std::string>(&*value)) return !s->empty();
  return !std::get<std::vector<std::string>>(*value).empty();
}

// `key in names or any(key.endswith("." + n) for n in names)`.
bool in_or_suffix(const std::vector<std::string>& names, const std::string& key) {
  for (const auto& name : names) {
    if (key == name) return true;
    if (key.size() > name.size() && key.ends_with(name) &&
        key[key.size() - name.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

// PEFT's " Note: You specified 'layers_to_transform': ..." tail of the no-match messages.
std::string layer_notes(const LoraConfig& config) {
  std::string out;
  if (config.layers_to_transform) {
    std::string value;
    if (const auto* i = std::get_if<int64_t>(&*config.layers_to_transform)) {
      value = std::to_string(*i);
    } else {
      const auto& list = std::get<std::vector<int64_t>>(*config.layers_to_transform);
      value = "[";
      for (size_t k = 0; k < list.size(); ++k) value += (k ? ", " : "") + std::to_string(list[k]);
      value += "]";
    }
    out += " Note: You specified 'layers_to_transform': " + value + ".";
  }
  if (config.layers_pattern) {
    const auto* s = std::get_if<std::string>(&*config.layers_pattern);
    const std::string value =
        s ? *s : py_list_repr(std::get<std::vector<std::string>>(*config.layers_pattern));
    out += " You also specified 'layers_pattern': " + value + ".";
  }
  return out;
}

// A few names that do exist, appended to no-match errors: the usual cause is a name copied from
// another architecture, and seeing the real names fixes it at once. Adaptable modules are the
// useful ones to show.
std::string existing_modules_hint(const std::vector<ModuleInfo>& modules) {
  constexpr size_t kMaxNames = 8;
  std::vector<std::string> names;
  for (const bool adaptable_only : {true, false}) {
    for (const auto& m : modules) {
      if (m.name.empty() || m.under_adapter || (adaptable_only && !m.adaptable)) continue;
      names.push_back(m.name);
    }
    if (!names.empty()) break;
  }
  if (names.empty()) return " (hint: the model has no named sub-modules)";
  std::string out = " (hint: modules that exist: ";
  for (size_t i = 0; i < std::min(names.size(), kMaxNames); ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kMaxNames) out += ", ... (" + std::to_string(names.size()) + " in all)";
  return out + ")";
}

}  // namespace
}  // namespace detail

MatchResult check_target_module_exists(const LoraConfig& config, const StrOrList& target_modules,
                                       const std::string& key) {
  // 1. exclude_modules wins over everything.
  if (detail::truthy(config.exclude_modules)) {
    if (const auto* s = std::get_if<std::string>(&*config.exclude_modules)) {
      if (regex_fullmatch(*s, key)) return MatchResult::kExcluded;
    } else if (detail::in_or_suffix(std::get<std::vector<std::string>>(*config.exclude_modules),
                                    key)) {
      return MatchResult::kExcluded;
    }
  }
  // 2. A module to be saved in full (or anything inside it) never gets LoRA: the
  // ModulesToSaveWrapper and a LoRA layer would fight over the same weights. `m` is used unescaped,
  // as in PEFT.
  if (config.modules_to_save) {
    for (const auto& m : *config.modules_to_save) {
      if (regex_match("(^|.*\\.)" + m + "($|\\..*)", key)) return MatchResult::kExcluded;
    }
  }
  // 4. A string is a regex over the whole name; no layer filtering.
  if (const auto* pattern = std::get_if<std::string>(&target_modules)) {
    return regex_fullmatch(*pattern, key) ? MatchResult::kMatched : MatchResult::kNotMatched;
  }
  const auto& names = std::get<std::vector<std::string>>(target_modules);
  // 5. An exact full name bypasses the layer filter.
  if (std::find(names.begin(), names.end(), key) != names.end()) return MatchResult::kMatched;
  // 6. Dotted-suffix match, then layers_to_transform may veto it.
  if (!detail::in_or_suffix(names, key)) return MatchResult::kNotMatched;
  if (!config.layers_to_transform) return MatchResult::kMatched;
  const auto* wanted_list = std::get_if<std::vector<int64_t>>(&*config.layers_to_transform);
  if (wanted_list && wanted_list->empty()) return MatchResult::kMatched;  // [] means "all layers"
  const std::optional<int64_t> index = layer_index(config.layers_pattern, key);
  if (!index) return MatchResult::kNotMatched;
  const bool wanted = wanted_list ? std::find(wanted_list->begin(), wanted_list->end(), *index) !=
                                        wanted_list->end()
                                  : *index == std::get<int64_t>(*config.layers_to_transform);
  return wanted ? MatchResult::kMatched : MatchResult::kNotMatched;
}

std::optional<int64_t> layer_index(const std::optional<StrOrList>& layers_pattern,
                                   const std::string& key) {
  std::optional<std::string> digits;
  if (!detail::truthy(layers_pattern)) {
    // Lazy `.*?` takes the first numbered segment (the layer), not a nested expert index (PEFT
    // #3016).
    digits = regex_match_group(R"(.*?\.[^.]*\.(\d+)\.)", key, 1);
  } else {
    const auto* single = std::get_if<std::string>(&*layers_pattern);
    const std::vector<std::string> patterns =
        single ? std::vector<std::string>{*single}
               : std::get<std::vector<std::string>>(*layers_pattern);
    // The mandatory dot before the pattern means a root-level ModuleList ("layers.0.q") never
    // matches, exactly as in PEFT (issue #3610).
    for (const auto& pattern : patterns) {
      digits = regex_match_group(R"(.*?\.)" + pattern + R"(\.(\d+)\.)", key, 1);
      if (digits) break;
    }
  }
  if (!digits) return std::nullopt;
  // int(group(1)): leading zeros are fine ("001" -> 1). Group 1 is the pattern's own group if it
  // has one, as in PEFT, so it may not be digits.
  int64_t value = 0;
  const char* end = digits->data() + digits->size();
  const auto [ptr, ec] = std::from_chars(digits->data(), end, value);
  if (ec == std::errc::result_out_of_range) return std::numeric_limits<int64_t>::max();
  PEFT_CHECK(ec == std::errc() && ptr == end, ConfigError, "targeting",
             "layers_pattern captured '" << *digits << "' as the layer index of '" << key
                                         << "', which is not an integer; expected a layers_pattern "
                                            "without capture groups, e.g. \"layers\"");
  return value;
}

std::optional<std::string> first_pattern_key(const std::vector<std::string>& pattern_keys,
                                             const std::string& name) {
  for (const auto& key : pattern_keys) {
    if (regex_match("(.*\\.)?(" + key + ")$", name)) return key;
  }
  return std::nullopt;
}

namespace {

// rank_pattern.get(get_pattern_key(keys, name), fallback). get_pattern_key returns `name` itself
// when no pattern matches, so an exact key equal to the name still counts.
template <typename T>
T lookup_pattern(const std::vector<std::pair<std::string, T>>& patterns, const std::string& name,
                 T fallback) {
  std::vector<std::string> keys;
  keys.reserve(patterns.size());
  for (const auto& entry : patterns) keys.push_back(entry.first);
  const std::string key = first_pattern_key(keys, name).value_or(name);
  for (const auto& entry : patterns) {
    if (entry.first == key) return entry.second;
  }
  return fallback;
}

}  // namespace

ResolvedRank resolve_rank(const LoraConfig& config, const std::string& name) {
  ResolvedRank out;
  // Rank and alpha are looked up independently: a rank_pattern entry never changes alpha (PEFT
  // #2194).
  out.r = lookup_pattern(config.rank_pattern, name, config.r);
  out.lora_alpha = lookup_pattern(config.alpha_pattern, name, config.lora_alpha);
  PEFT_CHECK(out.r > 0, ConfigError, "targeting",
             "`r` should be a positive integer value but the value passed is "
                 << out.r << " (for " << name << "); check r and rank_pattern");
  const double r = static_cast<double>(out.r);
  out.scaling = config.use_rslora ? out.lora_alpha / std::sqrt(r) : out.lora_alpha / r;
  return out;
}

TargetingResult find_targets(const LoraConfig& config, const std::vector<ModuleInfo>& modules,
                             const std::vector<std::string>& default_target_modules,
                             const std::string& output_layer_name) {
  TargetingResult result;
  const bool uses_parameters = config.target_parameters && !config.target_parameters->empty();

  // _prepare_adapter_config: None -> the model type's defaults, unless only parameters are
  // targeted.
  std::optional<StrOrList> targets = config.target_modules;
  if (!targets) {
    if (!default_target_modules.empty()) {
      targets = default_target_modules;
    } else if (!uses_parameters) {
      throw ConfigError("targeting",
                        "Please specify `target_modules` or `target_parameters`in `peft_config` "
                        "(hint: this model has no default target modules; pass e.g. "
                        "target_modules=\"all-linear\" or a list of module names)");
    }
  }

  // _maybe_include_all_linear_layers: "all-linear" (any case) -> every linear module but the output
  // layer.
  if (targets) {
    if (const auto* s = std::get_if<std::string>(&*targets)) {
      std::string lower = *s;
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (lower == "all-linear") {
        std::vector<std::string> linear;
        for (const auto& m : modules) {
          if (m.is_linear && !m.under_adapter && !m.name.empty() && m.name != output_layer_name) {
            linear.push_back(m.name);
          }
        }
        targets = std::move(linear);
      }
    }
  }
  result.resolved_target_modules = targets;

  for (const auto& m : modules) {
    if (m.name.empty()) continue;  // the root module itself is never a target
    if (m.under_adapter) {         // no LoRA on LoRA internals
      result.excluded.push_back(m.name);
      continue;
    }
    if (!targets) {  // target_modules None + target_parameters: modules are never matched
      result.unmatched.push_back(m.name);
      continue;
    }
    switch (check_target_module_exists(config, *targets, m.name)) {
      case MatchResult::kExcluded:
        result.excluded.push_back(m.name);
        break;
      case MatchResult::kNotMatched:
        result.unmatched.push_back(m.name);
        break;
      case MatchResult::kMatched:
        if (!m.adaptable) {
          throw UnsupportedError(
              "targeting",
              "Target module " + m.name + (m.type.empty() ? "" : " (" + m.type + ")") +
                  " is not supported. Currently, only the following modules are supported: Linear, "
                  "GPT-2 Conv1D, Embedding, Conv1d, Conv2d, Conv3d. (hint: build the model from "
                  "peft::nn "
                  "layers, or narrow target_modules / add exclude_modules so that only such layers "
                  "match)");
        }
        result.targeted.push_back(m.name);
        break;
    }
  }

  if (result.targeted.empty() && !uses_parameters) {
    std::string message;
    if (!result.excluded.empty() && result.unmatched.empty()) {
      message =
          "All modules were excluded. This is likely unintended. Check your `target_modules`, "
          "`exclude_modules` and `modules_to_save` configuration.";
    } else if (result.excluded.empty() && !result.unmatched.empty() && !detail::truthy(targets)) {
      message =
          "No `target_modules` passed but also no `target_parameters` found. Please check the "
          "values for "
          "these arguments.";
    } else if (result.excluded.empty() && !result.unmatched.empty()) {
      message = "Target modules " + detail::format_str_or_set(*targets) +
                " not found in the base model. Please check the target modules and try again." +
                detail::layer_notes(config);
    } else {
      message =
          "No modules were targeted for adaptation. This might be caused by a combination of "
          "mismatched "
          "target modules and excluded modules. Please check your `target_modules` and "
          "`exclude_modules` "
          "configuration. You may also have only targeted modules that are marked to be saved "
          "(`modules_to_save`)." +
          detail::layer_notes(config);
    }
    throw NoMatchingModuleError("targeting", message + detail::existing_modules_hint(modules));
  }
  if (detail::truthy(config.exclude_modules) && result.excluded.empty()) {
    warn("targeting",
         "You have passed exclude_modules=" + detail::format_str_or_set(*config.exclude_modules) +
             " but no modules were excluded. Please check that exclude_modules was set "
             "correctly.");
  }
  return result;
}

}  // namespace peft
