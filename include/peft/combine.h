// add_weighted_adapter: a new adapter combined from existing ones (cat, linear, TIES, DARE, magnitude_prune and
// their SVD variants), with PEFT's checks, configs and quirks. PEFT counterpart: LoraModel.add_weighted_adapter
// (tuners/lora/model.py); the tensor math is in peft/merge_utils.h.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace peft {

class PeftModel;

struct WeightedAdapterOptions {
  // "svd" (PEFT's default), "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
  // "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd". One adapter always combines as "linear".
  std::string combination_type = "svd";
  std::optional<int> svd_rank;        // SVD types: the new rank (default: the largest input rank)
  std::optional<double> svd_clamp;    // SVD types: clamp U and Vh to this quantile of their entries
  bool svd_full_matrices = true;
  std::optional<double> density;      // TIES / DARE / magnitude_prune: the fraction kept (required)
  std::string majority_sign_method = "total";  // "total" | "frequency"
};

// Adds `adapter_name` (not activated) combining `adapters` with `weights`. As in PEFT, nothing happens when the
// name already exists; the new config is the first adapter's with r = lora_alpha = the new rank (scaling 1).
// Throws AdapterNotFoundError for unknown adapters and ConfigError for PEFT's constraints (equal ranks for the
// linear family, target_modules of mixed kinds, modules_to_save copies of the same module, missing density).
void add_weighted_adapter(PeftModel& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& options = {});

}  // namespace peft
