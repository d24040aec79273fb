// KappaTune target selection: rank a base model's Linear layers (and fused 3-D MoE weights) by the
// condition number kappa = sigma_max / (sigma_min + 1e-8) of their weights and pick the
// lowest-kappa ones as LoRA targets. PEFT counterpart: KappaTuneSelector and
// find_kappa_target_modules in src/peft/helpers.py.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace peft {

struct KappaOptions {
  // A matrix with any dimension above this is skipped (for a 3-D parameter: any per-expert
  // dimension) (PEFT default 16384).
  int64_t max_dim_size_to_analyze = 16384;
  // Name suffixes of fused MoE parameters (3-D, first dim = expert) scored per expert and averaged.
  // Empty means PEFT's defaults {".gate_up_proj", ".down_proj", ".gate_proj", ".up_proj"} (PEFT:
  // `suffixes or defaults`).
  std::vector<std::string> moe_param_suffixes;
  // Progress on stderr while computing the SVDs (PEFT: a tqdm bar, default True).
  bool show_progress = true;
};

// One scored candidate: a full dotted module name (target_modules) or a full dotted parameter name
// (is_parameter, target_parameters).
struct KappaScore {
  std::string name;
  double kappa;
  bool is_parameter;
};

class KappaTuneSelector {
 public:
  // Computes every kappa at once (PEFT computes them lazily on the first get_best_* call).
  // Candidates: the adapter-ready Linear layers (nn::LayerKind::kLinear, lm_head included; GPT-2
  // Conv1D, Embedding and Conv layers are not nn.Linear in PEFT either) and the 3-D parameters
  // whose name ends with a moe suffix.
  explicit KappaTuneSelector(torch::nn::Module& model, KappaOptions options = {});

  // Every scored candidate, lowest kappa first; equal kappas keep model order (PEFT's stable sort).
  // A NaN kappa sorts last.
  const std::vector<KappaScore>& scores() const { return scores_; }
  // The candidate's kappa, or nullopt when it was not scored (skipped or not a candidate).
  std::optional<double> kappa(const std::string& name) const;

  // Linear module names, lowest kappa first. Priority: num_modules (the first k; a negative k drops
  // the last |k|, as a Python slice does) > top_p (k = max(1, int(n * top_p))) > threshold (kappa
  // <= threshold) > all. Empty when nothing was scored. A non-finite top_p throws ConfigError
  // (PEFT: int() raises).
  std::vector<std::string> get_best_targets(std::optional<double> top_p = std::nullopt,
                                            std::optional<int> num_modules = std::nullopt,
                                            std::optional<double> threshold = std::nullopt) const;
  // The same rules over the 3-D MoE parameters (full dotted parameter names).
  std::vector<std::string> get_best_target_parameters(
      std::optional<double> top_p = std::nullopt, std::optional<int> num_modules = std::nullopt,
      std::optional<double> threshold = std::nullopt) const;

 private:
  std::vector<std::string> select(bool parameters, std::optional<double> top_p,
                                  std::optional<int> num_modules,
                                  std::optional<double> threshold) const;
  std::vector<KappaScore> scores_;
};

// PEFT's result dict {"target_modules": [...], "target_parameters": [...] or None}.
struct KappaTargets {
  std::vector<std::string> target_modules;
  // nullopt when no MoE parameter was selected (PEFT returns None).
  std::optional<std::vector<std::string>> target_parameters;
};

// One-liner: get_best_targets(top_p) and get_best_target_parameters(top_p) of a KappaTuneSelector.
KappaTargets find_kappa_target_modules(torch::nn::Module& model, double top_p = 0.2,
                                       KappaOptions options = {});

}  // namespace peft
