// The pure merge math behind add_weighted_adapter: task arithmetic, magnitude / random (DARE)
// pruning, sign election and disjoint merge, TIES and DARE. PEFT counterpart:
// src/peft/utils/merge_utils.py. Every function takes the task tensors as a list of same-shaped
// tensors and one weight per tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace peft::merge {

enum class PruneMethod { kMagnitude, kRandom };
// "total": sign of the sum of the tensors; "frequency": sign of the sum of their signs.
enum class MajoritySign { kTotal, kFrequency };
MajoritySign parse_majority_sign(const std::string& s);  // ConfigError listing "total", "frequency"
std::string to_string(MajoritySign method);

// sum_i w_i T_i.
at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors,
                           const std::vector<double>& weights);

// Magnitude: keeps the int(density * numel) entries of largest |value| (ties broken as torch.topk
// does not promise either), zeroes the rest. Random (DARE): keeps each entry with probability
// density (Bernoulli draws from LibTorch's generator), divided by density when rescale. density >=
// 1 warns and returns the tensor unchanged; density < 0 is a ConfigError.
at::Tensor prune(const at::Tensor& tensor, double density, PruneMethod method,
                 bool rescale = false);

// stacked: (n, ...). True where sign(T_i) equals the elected sign (ties of the sum elect +1; zeros
// never agree).
at::Tensor calculate_majority_sign_mask(const at::Tensor& stacked,
                                        MajoritySign method = MajoritySign::kTotal);

// Mean over the tensors that agree with the elected sign: sum_i(T_i mask_i) / max(sum_i mask_i, 1).
at::Tensor disjoint_merge(const at::Tensor& stacked, const at::Tensor& mask);

// sum_i w_i prune_magnitude(T_i).
at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors,
                           const std::vector<double>& weights, double density);
// Magnitude-prune each, elect signs on the UNWEIGHTED pruned tensors, disjoint-merge the weighted
// ones (PEFT).
at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                double density, MajoritySign method = MajoritySign::kTotal);
// sum_i w_i prune_random_rescaled(T_i).
at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                       double density);
// Random prune + rescale, then sign election and disjoint merge as in ties.
at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                     double density, MajoritySign method = MajoritySign::kTotal);

}  // namespace peft::merge
