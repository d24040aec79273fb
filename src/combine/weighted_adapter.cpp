// add_weighted_adapter (PEFT LoraModel.add_weighted_adapter,
// _generalized_task_arithmetic_weighted_adapter,
// _svd_generalized_task_arithmetic_weighted_adapter), PEFT's quirks reproduced and documented where
// they happen.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "../strings.h"
#include "peft/combine.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/merge_utils.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

int sizing_rank(const LoraConfig& c) {
  int r = c.r;
  for (const auto& [pattern, value] : c.rank_pattern) r = std::max(r, value);
  return r;
}

// The merge of a combination type on a list of tensors (merge_of(type): the type without its
// "_svd").
at::Tensor combine(CombinationType type, const std::vector<at::Tensor>& tensors,
                   const std::vector<double>& weights, const WeightedAdapterOptions& o) {
  const auto sign = o.majority_sign_method;
  switch (merge_of(type)) {
    case CombinationType::kTies:
      return merge::ties(tensors, weights, *o.density, sign);
    case CombinationType::kDareLinear:
      return merge::dare_linear(tensors, weights, *o.density);
    case CombinationType::kDareTies:
      return merge::dare_ties(tensors, weights, *o.density, sign);
    case CombinationType::kMagnitudePrune:
      return merge::magnitude_prune(tensors, weights, *o.density);
    default:
      return merge::task_arithmetic(tensors, weights);
  }
}

LoraConfig new_config(PeftModel& model, const std::vector<std::string>& adapters, int new_rank) {
  LoraConfig c = model.peft_config(adapters.front());
  bool any_str = false, any_list = false;
  std::vector<std::string> strs;
  std::set<std::string> unioned;
  for (const auto& a : adapters) {
    const auto& t = model.peft_config(a).target_modules;
    PEFT_CHECK(t.has_value(), ConfigError, "add_weighted_adapter",
               "adapter \"" << a << "\" has no target_modules");
    if (const auto* s = std::get_if<std::string>(&*t)) {
      any_str = true;
      strs.push_back("(" + *s + ")");
    } else {
      any_list = true;
      for (const auto& m : std::get<std::vector<std::string>>(*t)) unioned.insert(m);
    }
  }
  PEFT_CHECK(
      !(any_str && any_list), ConfigError, "add_weighted_adapter",
      "all adapters must give target_modules of the same kind (all regex strings or all lists)");
  if (any_str) {
    c.target_modules = detail::join(strs, "|");
  } else {
    c.target_modules = std::vector<std::string>(unioned.begin(), unioned.end());
  }
  c.r = new_rank;
  c.lora_alpha = new_rank;
  c.rank_pattern.clear();
  c.alpha_pattern.clear();
  return c;
}

}  // namespace

void add_weighted_adapter(PeftModel& model, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& options) {
  const auto& existing = model.adapter_names();
  // PEFT quirk: an existing name returns silently.
  if (std::find(existing.begin(), existing.end(), adapter_name) != existing.end()) return;
  PEFT_CHECK(!adapters.empty() && adapters.size() == weights.size(), ConfigError,
             "add_weighted_adapter",
             adapters.size() << " adapters but " << weights.size()
                             << " weights (hint: one weight per adapter)");
  // Divergence from PEFT: a NaN / infinite weight (PEFT computes an all-NaN adapter) is refused.
  for (size_t i = 0; i < weights.size(); ++i) {
    PEFT_CHECK(std::isfinite(weights[i]), ConfigError, "add_weighted_adapter",
               "weight " << i << " (of adapter \"" << adapters[i] << "\") is " << weights[i]
                         << "; expected a finite number");
  }
  PEFT_CHECK(
      !options.density ||
          (std::isfinite(*options.density) && *options.density >= 0 && *options.density <= 1),
      ConfigError, "add_weighted_adapter", "density must be in [0, 1]; got " << *options.density);
  for (const auto& a : adapters) {
    PEFT_CHECK(
        !model.peft_config(a).target_parameters, ConfigError, "add_weighted_adapter",
        "adapter \"" << a
                     << "\" uses target_parameters, which add_weighted_adapter does not support");
    // Divergence from PEFT: PEFT combines BD-LoRA's packed factors as if they were dense (wrong
    // shapes or a wrong adapter); they are refused here.
    PEFT_CHECK(!model.peft_config(a).use_bdlora, UnsupportedError, "add_weighted_adapter",
               "adapter \"" << a
                            << "\" uses use_bdlora: its block-diagonal factors are stored packed "
                               "and cannot be combined factor by factor (hint: merge it into the "
                               "base model instead)");
  }
  for (auto& [name, layer] : nn::lora_layers(model.base_model())) {
    int copies = 0;
    for (const auto& a : adapters)
      copies += layer->modules_to_save() && layer->modules_to_save()->contains(a) ? 1 : 0;
    PEFT_CHECK(
        copies < 2, ConfigError, "add_weighted_adapter",
        "Cannot add weighted adapters if they target the same module with modules_to_save (\""
            << name << "\")");
  }
  CombinationType type = options.combination_type;
  if (adapters.size() == 1 && type != CombinationType::kLinear) {
    // PEFT quirk: one adapter is always combined as "linear".
    warn("add_weighted_adapter",
         "a single adapter is combined as \"linear\" (as PEFT does); combination_type=\"" +
             to_string(type) + "\" is not used");
    type = CombinationType::kLinear;
  }
  PEFT_CHECK(!needs_density(type) || options.density.has_value(), ConfigError,
             "add_weighted_adapter",
             "combination_type \"" << to_string(type)
                                   << "\" needs `density` (the fraction of entries kept)");
  const bool svd = is_svd_type(type);
  const bool linear_family = !svd && type != CombinationType::kCat;
  std::vector<int> ranks;
  for (const auto& a : adapters) ranks.push_back(sizing_rank(model.peft_config(a)));
  int new_rank = 0;
  if (linear_family) {
    PEFT_CHECK(std::all_of(ranks.begin(), ranks.end(), [&](int r) { return r == ranks.front(); }),
               ConfigError, "add_weighted_adapter",
               "All adapters must have the same r value when using " << to_string(type)
                                                                     << " combination_type");
    new_rank = ranks.front();
  } else if (type == CombinationType::kCat) {
    for (int r : ranks) new_rank += r;
  } else {
    new_rank = options.svd_rank.value_or(*std::max_element(ranks.begin(), ranks.end()));
  }
  model.add_adapter(adapter_name, new_config(model, adapters, new_rank));

  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : nn::lora_layers(model.base_model())) {
    if (!layer->has_adapter(adapter_name)) continue;
    const bool emb = layer->kind() == nn::LayerKind::kEmbedding;
    at::Tensor A = layer->adapter_tensor(adapter_name, emb ? "lora_embedding_A" : "lora_A.weight");
    at::Tensor B = layer->adapter_tensor(adapter_name, emb ? "lora_embedding_B" : "lora_B.weight");
    A.zero_();
    B.zero_();
    std::vector<at::Tensor> As, Bs, deltas;
    std::vector<double> w, ws;
    for (size_t i = 0; i < adapters.size(); ++i) {
      if (!layer->has_adapter(adapters[i]))
        continue;  // only the adapters present in this layer take part
      As.push_back(layer->adapter_tensor(adapters[i], emb ? "lora_embedding_A" : "lora_A.weight"));
      Bs.push_back(layer->adapter_tensor(adapters[i], emb ? "lora_embedding_B" : "lora_B.weight"));
      w.push_back(weights[i] * layer->scaling(adapters[i]));
      if (svd) deltas.push_back(layer->get_delta_weight(adapters[i]));
    }
    if (As.empty()) continue;
    if (type == CombinationType::kCat) {
      // B_new A_new = sum_i w_i s_i B_i A_i exactly: the weighted A's stacked by rows, the B's by
      // columns.
      int64_t offset = 0;
      for (size_t i = 0; i < As.size(); ++i) {
        const int64_t r = As[i].size(0);
        A.narrow(0, offset, r).copy_(As[i] * w[i]);
        B.narrow(1, offset, r).copy_(Bs[i]);
        offset += r;
      }
    } else if (linear_family) {
      // PEFT quirk (issue #3004): A and B are combined separately with weights sign(c)sqrt|c| and
      // sqrt|c|, so for several adapters B_new A_new has cross terms sqrt|c_i c_j| B_i A_j.
      std::vector<double> wa, wb;
      for (double c : w) {
        wa.push_back((c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0) * std::sqrt(std::abs(c)));
        wb.push_back(std::sqrt(std::abs(c)));
      }
      A.copy_(combine(type, As, wa, options).to(A.scalar_type()));
      B.copy_(combine(type, Bs, wb, options).to(A.scalar_type()));
    } else {
      // PEFT quirk: get_delta_weight already includes s_i and the weights are w_i s_i again, so the
      // SVD types apply each adapter's scaling twice.
      at::Tensor M = combine(type, deltas, w, options);
      const bool conv = M.dim() > 2;
      const std::vector<int64_t> b_shape = B.sizes().vec(), a_shape = A.sizes().vec();
      if (conv) M = M.flatten(1);
      if (layer->kind() == nn::LayerKind::kConv1D || emb) M = M.t();
      auto [U, S, Vh] = at::linalg_svd(M.to(at::kFloat), options.svd_full_matrices);
      const int64_t k = new_rank;
      U = U.narrow(1, 0, std::min<int64_t>(k, U.size(1))) *
          S.narrow(0, 0, std::min<int64_t>(k, S.size(0)));
      Vh = Vh.narrow(0, 0, std::min<int64_t>(k, Vh.size(0)));
      if (options.svd_clamp) {
        at::Tensor dist = at::cat({U.flatten(), Vh.flatten()});
        const double hi = at::quantile(dist, *options.svd_clamp).item<double>();
        U = U.clamp(-hi, hi);
        Vh = Vh.clamp(-hi, hi);
      }
      PEFT_CHECK(U.numel() == B.numel() && Vh.numel() == A.numel(), ShapeMismatchError,
                 "add_weighted_adapter",
                 "layer \"" << name << "\": the SVD gives " << U.sizes() << " and " << Vh.sizes()
                            << " but the new adapter's factors are " << B.sizes() << " and "
                            << A.sizes() << " (hint: svd_rank must not exceed min(in, out))");
      B.copy_(U.reshape(b_shape).to(B.scalar_type()));
      A.copy_(Vh.reshape(a_shape).to(A.scalar_type()));
    }
  }
}

}  // namespace peft
