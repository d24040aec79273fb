// Which modules get adapters, with which r and alpha: PEFT's matching rules exactly
// (check_target_module_exists / get_pattern_key in src/peft/tuners/tuners_utils.py and
// utils/other.py).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "peft/config.h"

namespace peft {

// Python `re` semantics through PCRE2. Patterns are compiled once and cached (thread-safe).
// Invalid patterns throw ConfigError naming the pattern and the PCRE2 message.
bool regex_fullmatch(const std::string& pattern, const std::string& text);  // re.fullmatch
bool regex_match(const std::string& pattern,
                 const std::string& text);  // re.match (anchored at start)
// re.match(pattern, text) and returns capture group `group` (nullopt when no match).
std::optional<std::string> regex_match_group(const std::string& pattern, const std::string& text,
                                             int group);

enum class MatchResult { kNotMatched, kMatched, kExcluded };

// PEFT's check_target_module_exists for one module name (steps 1-6 of the semantics doc,
// section 1.4): exclude_modules, the modules_to_save guard, string = fullmatch, list = exact name
// or ".name" suffix, layers_to_transform / layers_pattern on suffix matches. `target_modules` must
// already be resolved (no "all-linear", no default): pass it explicitly.
MatchResult check_target_module_exists(const LoraConfig& config, const StrOrList& target_modules,
                                       const std::string& key);

// Layer index of `key` per layers_pattern (section 1.6), or nullopt.
std::optional<int64_t> layer_index(const std::optional<StrOrList>& layers_pattern,
                                   const std::string& key);

// get_pattern_key: first key K (insertion order) with re.match(r"(.*\.)?(" + K + r")$", name);
// nullopt if none.
std::optional<std::string> first_pattern_key(const std::vector<std::string>& pattern_keys,
                                             const std::string& name);

// r, alpha and scaling for a module (or parameter) name, from rank_pattern / alpha_pattern /
// use_rslora.
struct ResolvedRank {
  int r = 0;
  double lora_alpha = 0;
  double scaling = 0;
};
ResolvedRank resolve_rank(const LoraConfig& config, const std::string& name);

// One candidate module as the injector sees it.
struct ModuleInfo {
  std::string name;  // full dotted name
  bool is_linear =
      false;  // Linear or GPT-2 Conv1D (for all-linear); also an existing LoRA Linear layer
  bool adaptable = false;  // a peft::nn layer that can host LoRA
  // A sub-module of an existing LoRA layer (its base_layer, lora_A.x, ...): PEFT never matches
  // these and counts them as excluded, which changes which "no match" message a 2nd adapter gets.
  bool under_adapter = false;
  std::string type;  // class name, only used in error messages ("ReLU"); may be empty
};

// The outcome of scanning a model for one adapter.
struct TargetingResult {
  std::vector<std::string> targeted;  // in module order
  std::vector<std::string> excluded;
  std::vector<std::string> unmatched;
  // After default / all-linear expansion (what PEFT writes back into the config); nullopt when
  // target_modules stays None because only target_parameters are used.
  std::optional<StrOrList> resolved_target_modules;
};

// Scans `modules` (named_modules order). `target_modules` None uses `default_target_modules`
// (PEFT's per-model mapping; empty for custom models -> ConfigError "Please specify
// `target_modules` or `target_parameters`"). "all-linear" expands to every linear module except
// `output_layer_name` (empty for plain modules). Throws NoMatchingModuleError with PEFT's messages
// (section 1.4) plus a hint listing some existing names, and UnsupportedError when a matched module
// is not `adaptable`. When `target_parameters` is non-empty no NoMatchingModuleError is thrown:
// PEFT only raises if parameters matched nothing either, which the caller decides. The root (empty
// name) is skipped. Warns (peft::warn) when exclude_modules is set but excluded nothing.
TargetingResult find_targets(const LoraConfig& config, const std::vector<ModuleInfo>& modules,
                             const std::vector<std::string>& default_target_modules = {},
                             const std::string& output_layer_name = "");

}  // namespace peft
