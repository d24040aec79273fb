// LoraConfig::validate(): the checks of PEFT's LoraConfig.__post_init__ (plus the per-layer r /
// orthogonal checks PEFT only runs at injection), with PEFT's messages. Every problem is collected
// and thrown once.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../strings.h"
#include "peft/config.h"
#include "peft/error.h"

namespace peft {
namespace {

constexpr const char* kComponent = "LoraConfig";

// Python truthiness of a kept-verbatim sub-config (PEFT tests `if self.megatron_config:`).
bool truthy(const std::optional<RawJson>& raw) {
  if (!raw) return false;
  try {
    const auto v = nlohmann::json::parse(raw->text);
    if (v.is_null()) return false;
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number()) return v.get<double>() != 0.0;
    return !v.empty();  // string, list, object
  } catch (const nlohmann::json::exception&) {
    return true;  // not JSON, but something was given
  }
}

bool truthy(const std::optional<StrOrList>& v) {
  if (!v) return false;
  if (const auto* s = std::get_if<std::string>(&*v)) return !s->empty();
  return !std::get<std::vector<std::string>>(*v).empty();
}

// Python's str() of a float: 0.5, 1.0, 1e-05 (the shortest text that reads back the same value).
std::string py_float(double d) { return nlohmann::json(d).dump(); }

}  // namespace

void LoraConfig::validate() const {
  using Kind = InitLoraWeights::Kind;
  std::vector<std::string> problems;
  const auto warn_config = [](const std::string& message) { warn(kComponent, message); };
  const Kind init = init_lora_weights.kind;

  if (peft_type != "LORA") {
    problems.push_back("`peft_type` must be \"LORA\", got \"" + peft_type + "\"");
  }
  // PEFT checks r per layer (update_layer); checking here catches it before any model is touched.
  if (r <= 0) {
    problems.push_back("`r` should be a positive integer value but the value passed is " +
                       std::to_string(r));
  }
  for (const auto& [pattern, rank] : rank_pattern) {
    if (rank <= 0) {
      problems.push_back("`r` should be a positive integer value but the value passed is " +
                         std::to_string(rank) + " (rank_pattern[\"" + pattern + "\"])");
    }
  }
  if (!(lora_dropout >= 0.0 && lora_dropout < 1.0)) {
    problems.push_back("`lora_dropout` must be in [0, 1), got " + py_float(lora_dropout));
  }

  const bool target_is_str = target_modules && std::holds_alternative<std::string>(*target_modules);
  if (target_is_str && layers_to_transform) {
    problems.push_back("`layers_to_transform` cannot be used when `target_modules` is a str.");
  }
  if (target_is_str && layers_pattern) {
    problems.push_back("`layers_pattern` cannot be used when `target_modules` is a str.");
  }
  // PEFT 0.20.1 tests `is None`, so layers_to_transform = 0 counts as given.
  if (truthy(layers_pattern) && !layers_to_transform) {
    problems.push_back(
        "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
  }
  if (use_dora && truthy(megatron_config)) {
    problems.push_back("DoRA does not support megatron_core, please set `use_dora=False`.");
  }

  // PEFT's elif chain: the eva checks run only when no loftq branch fired, the corda ones only when
  // no eva branch fired. PEFT then fills in the default EvaConfig / CordaConfig; validate() is
  // const, so the init code uses eva_config.value_or(EvaConfig{}) instead.
  if (init == Kind::kLoftq) {
    if (!loftq_config) {
      problems.push_back("`loftq_config` must be specified when `init_lora_weights` is 'loftq'.");
    }
  } else if (loftq_config) {
    warn_config(
        "`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.");
  } else if (init == Kind::kEva && !eva_config) {
    warn_config(
        "`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA "
        "config.");
  } else if (init != Kind::kEva && eva_config) {
    warn_config(
        "`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'.");
  } else if (init == Kind::kCorda && !corda_config) {
    warn_config(
        "`init_lora_weights` is 'corda' but `corda_config` is not specified. Using default CorDA "
        "config.");
  } else if (init != Kind::kCorda && corda_config) {
    warn_config(
        "`corda_config` specified but will be ignored when `init_lora_weights` is not 'corda'.");
  }

  if (lora_bias) {
    if (init != Kind::kTrue && init != Kind::kFalse) {
      problems.push_back(
          "The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
          "init_lora_weights=" +
          to_string(init_lora_weights) + " instead.");
    }
    if (use_dora) {
      problems.push_back(
          "The argument lora_bias=True is not supported for DoRA, please pass use_dora=False");
    }
  }

  if (alora_invocation_tokens && task_type != TaskType::kCausalLm) {
    warn_config(
        "aLoRA (`alora_invocation_tokens`) is meant for task_type CAUSAL_LM, got task_type=" +
        (task_type ? to_string(*task_type) : std::string("None")) +
        "; the invocation tokens are looked up in input_ids, which other tasks may not pass.");
  }

  // Converting PiSSA/OLoRA/CorDA/LoRA-GA back to plain LoRA at save time cannot undo per-pattern
  // rslora scaling.
  const bool converts_on_save =
      init == Kind::kPissa || init == Kind::kOlora || init == Kind::kCorda || init == Kind::kLoraGa;
  if (use_rslora && (!rank_pattern.empty() || !alpha_pattern.empty()) && converts_on_save) {
    warn_config(
        "Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern and post-training conversion "
        "of "
        "modified base weights PiSSA/CorDA/OLoRA/LoRA-GA means that you won't be able to pass "
        "`path_initial_model_for_weight_conversion` to `save_pretrained` to restore the initial "
        "values "
        "of the base weights; if you intend to do this, please ensure not to use rslora or "
        "rank_pattern/alpha_pattern.");
  }

  if (eva_config) {
    if (!(eva_config->rho >= 1.0)) {
      problems.push_back("`rho` must be >= 1.0 (eva_config.rho = " + py_float(eva_config->rho) +
                         ")");
    }
    if (!(eva_config->tau >= 0.0 && eva_config->tau <= 1.0)) {
      problems.push_back("`tau` must be between 0.0 and 1.0. (eva_config.tau = " +
                         py_float(eva_config->tau) + ")");
    }
  }
  if (arrow_config) {
    if (arrow_config->top_k <= 0) {
      problems.push_back("arrow_config.top_k must be a positive integer, got " +
                         std::to_string(arrow_config->top_k));
    }
    if (!(arrow_config->router_temperature > 0.0)) {
      problems.push_back("arrow_config.router_temperature must be > 0, got " +
                         py_float(arrow_config->router_temperature));
    }
  }
  if (velora_config) {  // PEFT VeloraConfig.__post_init__
    if (velora_config->num_groups <= 0) {
      problems.push_back("`num_groups` should be positive, got " +
                         std::to_string(velora_config->num_groups) + ". (velora_config)");
    }
    if (!(velora_config->scale > 0.0)) {
      problems.push_back("`scale` should be positive, got " + py_float(velora_config->scale) +
                         ". (velora_config)");
    }
    const std::string& t = velora_config->init_type;
    if (t != "batch_average_once" && t != "batch_average" && t != "random") {
      problems.push_back("Unsupported `init_type` '" + t +
                         "'. Supported values are 'batch_average_once', 'batch_average', and "
                         "'random'. (velora_config)");
    }
  }
  if (monteclora_config) {  // PEFT MontecloraConfig.__post_init__
    if (monteclora_config->num_samples <= 0)
      problems.push_back("`num_samples` must be greater than 0. (monteclora_config)");
    if (!(monteclora_config->dirichlet_prior > 0.0))
      problems.push_back("`dirichlet_prior` must be greater than 0. (monteclora_config)");
    if (monteclora_config->buffer_size <= 0)
      problems.push_back("`buffer_size` must be greater than 0. (monteclora_config)");
  }
  if (use_bdlora) {
    // PEFT BdLoraConfig.__post_init__: the same string in both lists.
    std::vector<std::string> overlap;
    for (const auto& a : use_bdlora->target_modules_bd_a.value_or(std::vector<std::string>{})) {
      const auto& b = use_bdlora->target_modules_bd_b.value_or(std::vector<std::string>{});
      if (std::find(b.begin(), b.end(), a) != b.end()) overlap.push_back(a);
    }
    if (!overlap.empty()) {
      problems.push_back("Found overlapping modules in target_modules_bd lists: " +
                         detail::join(overlap, ", ", "'") +
                         " (hint: a module's A or its B is block-diagonal, not both)");
    }
    // Divergence from PEFT: PEFT checks nblocks only by dividing by it when a layer is built.
    if (use_bdlora->nblocks < 1) {
      problems.push_back("use_bdlora.nblocks must be a positive integer, got " +
                         std::to_string(use_bdlora->nblocks));
    }
  }
  // PEFT raises this when the layer is built; every rank that a layer can get is known here
  // already.
  if (init == Kind::kOrthogonal) {
    if (r > 0 && r % 2 != 0) {
      problems.push_back("Orthogonal initialization requires the LoRA rank to be even, got " +
                         std::to_string(r) + " instead.");
    }
    for (const auto& [pattern, rank] : rank_pattern) {
      if (rank > 0 && rank % 2 != 0) {
        problems.push_back("Orthogonal initialization requires the LoRA rank to be even, got " +
                           std::to_string(rank) + " instead. (rank_pattern[\"" + pattern + "\"])");
      }
    }
  }

  if (problems.empty()) return;
  throw ConfigError(kComponent,
                    "invalid LoraConfig: " + detail::numbered_list(problems, "problems"));
}

}  // namespace peft
