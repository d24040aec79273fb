// PEFT's merge_utils.py: the tensor math of the TIES / DARE / magnitude-prune combinations.
#include "peft/merge_utils.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <cmath>

#include "../spellings.h"
#include "peft/error.h"

namespace peft::merge {
namespace {

// The tensors stacked on a new dim 0 (all the same shape), and the weights shaped to broadcast
// against it.
at::Tensor stack(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                 at::Tensor* w) {
  PEFT_CHECK(!tensors.empty(), ConfigError, "merge", "no task tensors to combine");
  PEFT_CHECK(tensors.size() == weights.size(), ConfigError, "merge",
             tensors.size() << " task tensors but " << weights.size()
                            << " weights (hint: one weight per adapter)");
  for (size_t i = 1; i < tensors.size(); ++i) {
    PEFT_CHECK(tensors[i].sizes() == tensors[0].sizes(), ShapeMismatchError, "merge",
               "task tensor " << i << " has shape " << tensors[i].sizes() << " but tensor 0 has "
                              << tensors[0].sizes());
  }
  at::Tensor stacked = at::stack(tensors, 0);
  if (w) {
    std::vector<int64_t> shape(static_cast<size_t>(stacked.dim()), 1);
    shape[0] = static_cast<int64_t>(weights.size());
    // PEFT builds the weights as a tensor of the tensors' dtype and device.
    *w = torch::tensor(weights, at::TensorOptions().dtype(at::kDouble))
             .to(stacked.device(), stacked.scalar_type())
             .view(shape);
  }
  return stacked;
}

std::vector<at::Tensor> pruned(const std::vector<at::Tensor>& tensors, double density,
                               PruneMethod method, bool rescale) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(prune(t, density, method, rescale));
  return out;
}

// TIES' second half, shared by ties and dare_ties: elect signs on the unweighted pruned tensors,
// then disjoint-merge the weighted ones.
at::Tensor elect_and_merge(const std::vector<at::Tensor>& pruned_tensors,
                           const std::vector<double>& weights, MajoritySign method) {
  at::Tensor w;
  at::Tensor stacked = stack(pruned_tensors, weights, &w);
  return disjoint_merge(stacked * w, calculate_majority_sign_mask(stacked, method));
}

constexpr detail::Spellings<MajoritySign, 2> kMajoritySigns{{
    {MajoritySign::kTotal, "total"},
    {MajoritySign::kFrequency, "frequency"},
}};

}  // namespace

MajoritySign parse_majority_sign(const std::string& s) {
  const auto m = detail::find_spelling(kMajoritySigns, s);
  if (!m) {
    throw ConfigError("merge", "majority_sign_method \"" + s + "\" is not one of " +
                                   detail::accepted_spellings(kMajoritySigns));
  }
  return *m;
}

std::string to_string(MajoritySign method) { return detail::spelling_of(kMajoritySigns, method); }

at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors,
                           const std::vector<double>& weights) {
  at::Tensor w;
  at::Tensor stacked = stack(tensors, weights, &w);
  return (stacked * w).sum(0);
}

at::Tensor prune(const at::Tensor& tensor, double density, PruneMethod method, bool rescale) {
  if (density >= 1) {
    warn("merge", "The density " + std::to_string(density) +
                      " is greater than or equal to 1, no pruning will be "
                      "performed.");
    return tensor;
  }
  PEFT_CHECK(density >= 0, ConfigError, "merge", "Density should be >= 0, got " << density);
  if (method == PruneMethod::kMagnitude) {
    const auto k = static_cast<int64_t>(density * static_cast<double>(tensor.numel()));
    at::Tensor mask = at::zeros({tensor.numel()}, tensor.options());
    if (k > 0) {
      at::Tensor idx =
          std::get<1>(at::topk(tensor.abs().reshape({-1}), k, /*dim=*/-1, /*largest=*/true));
      mask.index_fill_(0, idx, 1);
    }
    return tensor * mask.view(tensor.sizes());
  }
  at::Tensor keep = at::bernoulli(at::full_like(tensor, density));
  at::Tensor out = keep * tensor;
  // DARE: the kept entries are rescaled by 1 / density so that the expected value is unchanged.
  return rescale ? out / density : out;
}

at::Tensor calculate_majority_sign_mask(const at::Tensor& stacked, MajoritySign method) {
  at::Tensor sign = stacked.sign();
  at::Tensor magnitude = method == MajoritySign::kTotal ? stacked.sum(0) : sign.sum(0);
  at::Tensor majority =
      at::where(magnitude >= 0, at::ones_like(magnitude), -at::ones_like(magnitude));
  return sign == majority;
}

at::Tensor disjoint_merge(const at::Tensor& stacked, const at::Tensor& mask) {
  at::Tensor mixed = (stacked * mask).sum(0);
  at::Tensor kept = mask.sum(0).to(stacked.scalar_type());
  return mixed / at::clamp_min(kept, 1.0);
}

at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors,
                           const std::vector<double>& weights, double density) {
  return task_arithmetic(pruned(tensors, density, PruneMethod::kMagnitude, false), weights);
}

at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                double density, MajoritySign method) {
  return elect_and_merge(pruned(tensors, density, PruneMethod::kMagnitude, false), weights, method);
}

at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                       double density) {
  return task_arithmetic(pruned(tensors, density, PruneMethod::kRandom, true), weights);
}

at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                     double density, MajoritySign method) {
  return elect_and_merge(pruned(tensors, density, PruneMethod::kRandom, true), weights, method);
}

}  // namespace peft::merge
