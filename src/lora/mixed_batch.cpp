// Mixed batches (PEFT's adapter_names): the model-level checks and guard, the layer's per-row
// dispatch and PEFT's sub-batch loop.
#include "peft/lora/mixed_batch.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "mixed_kernel.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/lora/variant.h"

namespace peft::nn {

void check_adapter_names(const torch::nn::Module& model,
                         const std::vector<std::string>& adapter_names) {
  PEFT_CHECK(
      !model.is_training(), ConfigError, "adapter_names",
      "Cannot pass `adapter_names` when the model is in training mode (hint: call eval() first)");
  std::set<std::string> expected;
  for (const auto& [name, layer] : lora_layers(const_cast<torch::nn::Module&>(model))) {
    for (const auto& a : layer->adapter_names()) expected.insert(a);
    PEFT_CHECK(
        layer->kind() != LayerKind::kParam || layer->adapter_names().empty(), UnsupportedError,
        "adapter_names",
        "mixed adapter batches are not supported with target_parameters (LoRA on parameter holder "
            << name
            << "); PEFT refuses them too (hint: run one adapter per batch, or merge the adapter)");
  }
  std::set<std::string> unexpected;
  for (const auto& n : adapter_names) {
    if (n != kBaseAdapterName && !expected.count(n)) unexpected.insert(n);
  }
  if (unexpected.empty()) return;
  std::ostringstream os;
  for (const auto& n : unexpected) os << (os.tellp() > 0 ? ", " : "") << n;
  std::ostringstream have;
  for (const auto& n : expected) have << (have.tellp() > 0 ? ", " : "") << n;
  throw AdapterNotFoundError(
      "adapter_names", "Trying to infer with non-existing adapter(s): " + os.str() +
                           "; the model has [" + have.str() + "] (hint: \"" + kBaseAdapterName +
                           "\" selects the base model)");
}

ForwardContext MixedBatchGuard::with_names(std::vector<std::string> names,
                                           MixedBatchKernel kernel) {
  ForwardContext context = current_forward_context();
  context.adapter_names = std::move(names);
  context.mixed_batch_kernel = kernel;
  return context;
}

MixedBatchGuard::MixedBatchGuard(const torch::nn::Module& model,
                                 std::vector<std::string> adapter_names, MixedBatchKernel kernel)
    : guard_((check_adapter_names(model, adapter_names),
              with_names(std::move(adapter_names), kernel))) {}

at::Tensor LoraLayerImpl::forward_mixed(const at::Tensor& x,
                                        const std::vector<std::string>& names) const {
  // PEFT LoraLayer._check_forward_args.
  PEFT_CHECK(x.dim() >= 1 && x.size(0) == static_cast<int64_t>(names.size()), ShapeMismatchError,
             "adapter_names",
             "Length of `adapter_names` should be the same as the number of inputs, but got "
                 << names.size() << " and " << (x.dim() ? x.size(0) : 0) << " respectively.");
  PEFT_CHECK(!merged(), ConfigError, "adapter_names",
             "Cannot pass `adapter_names` when there are merged adapters, please call "
             "`unmerge_adapter` first.");
  std::vector<AdapterRows> groups;  // first-appearance order
  for (size_t i = 0; i < names.size(); ++i) {
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const AdapterRows& g) { return g.adapter == names[i]; });
    if (it == groups.end()) it = groups.insert(groups.end(), AdapterRows{names[i], {}});
    it->rows.push_back(static_cast<int64_t>(i));
  }
  for (const auto& g : groups) {
    const auto v = variant(g.adapter);
    const std::string refusal = v ? v->mixed_batch_refusal() : std::string();
    PEFT_CHECK(refusal.empty(), ConfigError, "adapter_names",
               refusal << " (adapter \"" << g.adapter << "\")");
  }
  if (observer_) observer_(x);
  at::Tensor result = base_forward(x, weight_, bias_);
  if (!enabled_) return result;
  const auto dtype = result.scalar_type();
  const auto opts = at::TensorOptions().dtype(at::kLong).device(x.device());
  // Rows whose adapter replaces the base weights here (a modules_to_save copy or trainable tokens)
  // get the base computed again with those weights. Divergence from PEFT: PEFT's
  // ModulesToSaveWrapper raises a KeyError for an adapter without a copy in this module; such rows
  // get the original module here, as "__base__" rows do.
  for (const auto& g : groups) {
    if (g.adapter == kBaseAdapterName) continue;
    const bool copy = modules_to_save_ && modules_to_save_->contains(g.adapter);
    const bool tokens = tokens_ && tokens_->has(g.adapter);
    if (!copy && !tokens) continue;
    at::Tensor w = weight_, b = bias_;
    if (copy) {
      auto c = modules_to_save_->copy(g.adapter);
      w = c->weight;
      b = c->bias;
    }
    if (tokens) w = tokens_->substituted(w, {g.adapter});
    at::Tensor rows = at::tensor(g.rows, opts);
    result = result.index_copy(0, rows, base_forward(x.index_select(0, rows), w, b).to(dtype));
  }
  std::vector<AdapterRows> lora;
  for (const auto& g : groups) {
    if (g.adapter != kBaseAdapterName && has_adapter(g.adapter)) lora.push_back(g);
  }
  if (lora.empty()) return result;
  result = add_mixed_output(std::move(result), x, lora);
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

at::Tensor LoraLayerImpl::add_mixed_output(at::Tensor result, const at::Tensor& x,
                                           const std::vector<AdapterRows>& groups) const {
  return add_mixed_output_loop(std::move(result), x, groups);
}

at::Tensor LoraLayerImpl::add_mixed_output_loop(at::Tensor result, const at::Tensor& x,
                                                const std::vector<AdapterRows>& groups) const {
  // PEFT _mixed_batch_forward: result[idx] += adapter(x[idx]) per group. The context is narrowed to
  // the group's rows so that aLoRA offsets (and input ids) line up with the sub-batch.
  const ForwardContext& outer = current_forward_context();
  std::vector<std::optional<int64_t>> offsets;
  const bool any_alora = std::any_of(groups.begin(), groups.end(), [&](const AdapterRows& g) {
    return adapter_settings(g.adapter).alora_invocation_tokens.has_value();
  });
  const auto opts = at::TensorOptions().dtype(at::kLong).device(x.device());
  for (const auto& g : groups) {
    at::Tensor rows = at::tensor(g.rows, opts);
    ForwardContext inner;
    if (any_alora) {
      const auto& tokens = adapter_settings(g.adapter).alora_invocation_tokens;
      if (outer.alora_offsets) {
        offsets = *outer.alora_offsets;
      } else if (outer.input_ids.defined() && tokens) {
        offsets = calculate_alora_offsets(outer.input_ids, *tokens);
      }
      if (!offsets.empty()) {
        inner.alora_offsets.emplace();
        for (int64_t r : g.rows) inner.alora_offsets->push_back(offsets.at(static_cast<size_t>(r)));
      }
    }
    if (outer.input_ids.defined())
      inner.input_ids = outer.input_ids.index_select(0, rows.to(outer.input_ids.device()));
    ForwardContextGuard guard(std::move(inner));
    at::Tensor sub = add_output(result.index_select(0, rows), x.index_select(0, rows), g.adapter);
    result = result.index_copy(0, rows, sub.to(result.scalar_type()));
  }
  return result;
}

}  // namespace peft::nn
