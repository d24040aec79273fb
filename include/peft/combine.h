// add_weighted_adapter: a new adapter combined from existing ones (cat, linear, TIES, DARE,
// magnitude_prune and their SVD variants), with PEFT's checks, configs and quirks. PEFT
// counterpart: LoraModel.add_weighted_adapter (tuners/lora/model.py); the tensor math is in
// peft/merge_utils.h.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "peft/merge_utils.h"

namespace peft {

class PeftModel;

// PEFT's combination_type. The linear family (linear, ties, dare_linear, dare_ties,
// magnitude_prune) combines the A and B factors separately and needs equal ranks; the SVD family
// ("svd" and the "..._svd" forms) factors the combined delta weights; "cat" stacks the factors
// (exact, rank = the sum).
enum class CombinationType {
  kSvd,
  kLinear,
  kCat,
  kTies,
  kTiesSvd,
  kDareTies,
  kDareLinear,
  kDareTiesSvd,
  kDareLinearSvd,
  kMagnitudePrune,
  kMagnitudePruneSvd,
};
// PEFT's spellings ("svd", "dare_ties_svd", ...); parse throws ConfigError "Invalid
// combination_type: <s>" listing every accepted spelling.
CombinationType parse_combination_type(const std::string& s);
std::string to_string(CombinationType type);
std::vector<std::string> combination_type_spellings();
// The SVD family.
bool is_svd_type(CombinationType type);
// The merge a type runs on its tensors: the type itself for the linear family, the type without
// "_svd" for the SVD family (kLinear for "svd"), kCat for "cat".
CombinationType merge_of(CombinationType type);
// TIES, DARE and magnitude_prune (and their SVD forms) keep a fraction of the entries: they need
// `density`.
bool needs_density(CombinationType type);

struct WeightedAdapterOptions {
  CombinationType combination_type = CombinationType::kSvd;  // PEFT's default "svd"
  std::optional<int> svd_rank;      // SVD types: the new rank (default: the largest input rank)
  std::optional<double> svd_clamp;  // SVD types: clamp U and Vh to this quantile of their entries
  bool svd_full_matrices = true;
  std::optional<double> density;  // TIES / DARE / magnitude_prune: the fraction kept (required)
  merge::MajoritySign majority_sign_method = merge::MajoritySign::kTotal;  // "total" | "frequency"
};

// Adds `adapter_name` (not activated) combining `adapters` with `weights`. As in PEFT, nothing
// happens when the name already exists; the new config is the first adapter's with r = lora_alpha =
// the new rank (scaling 1), and one adapter is combined as "linear" whatever combination_type says
// (with a warning naming the type not used). Throws AdapterNotFoundError for unknown adapters and
// ConfigError for PEFT's constraints (equal ranks for the linear family, target_modules of mixed
// kinds, modules_to_save copies of the same module, missing density).
void add_weighted_adapter(PeftModel& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& options = {});

}  // namespace peft
