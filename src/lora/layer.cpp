// Adapter bookkeeping shared by every adapter-ready layer (PEFT LoraLayer + ModulesToSaveWrapper).
#include "peft/lora/layer.h"
#include "peft/lora/param.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

#include "init_weights.h"
#include "mixed_kernel.h"
#include "peft/error.h"

namespace peft::nn {

std::string to_string(LayerKind kind) {
  switch (kind) {
    case LayerKind::kLinear: return "Linear";
    case LayerKind::kConv1D: return "Conv1D";
    case LayerKind::kEmbedding: return "Embedding";
    case LayerKind::kConv1d: return "Conv1d";
    case LayerKind::kConv2d: return "Conv2d";
    case LayerKind::kConv3d: return "Conv3d";
    case LayerKind::kParam: return "Parameter";
  }
  return "?";
}

double AdapterSettings::base_scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r)) : lora_alpha / r;
}

FactorImpl::FactorImpl(at::Tensor w, at::Tensor b) {
  weight = register_parameter("weight", std::move(w));
  if (b.defined()) bias = register_parameter("bias", std::move(b));
}

void AdapterDictImpl::insert(const std::string& adapter, std::shared_ptr<torch::nn::Module> module) {
  if (items_.count(adapter)) erase(adapter);
  items_[adapter] = register_module(adapter, std::move(module));
}

void AdapterDictImpl::erase(const std::string& adapter) {
  if (!items_.count(adapter)) return;
  items_.erase(adapter);
  unregister_module(adapter);
}

bool AdapterDictImpl::contains(const std::string& adapter) const { return items_.count(adapter) != 0; }

std::shared_ptr<torch::nn::Module> AdapterDictImpl::at(const std::string& adapter) const {
  auto it = items_.find(adapter);
  PEFT_CHECK(it != items_.end(), AdapterNotFoundError, "lora", "adapter \"" << adapter << "\" has no entry in " << name());
  return it->second;
}

std::vector<std::string> AdapterDictImpl::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : items_) out.push_back(k);
  return out;
}

LoraLayerImpl::LoraLayerImpl(LayerKind kind) : mixed_cache_(std::make_shared<mixed::MixedCache>()), kind_(kind) {}
LoraLayerImpl::~LoraLayerImpl() = default;

void LoraLayerImpl::register_base(at::Tensor weight, at::Tensor bias) {
  weight_ = register_parameter("weight", std::move(weight));
  if (bias.defined()) bias_ = register_parameter("bias", std::move(bias));
}

void LoraLayerImpl::add_factors(const std::string& adapter, const AdapterSettings& s,
                                const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape) {
  if (!lora_A_) {
    lora_A_ = register_module("lora_A", AdapterDict());
    lora_B_ = register_module("lora_B", AdapterDict());
  }
  auto opts = weight_.options().requires_grad(false);
  if (!at::isFloatingType(weight_.scalar_type())) opts = opts.dtype(at::kFloat);
  at::Tensor A = torch::empty(a_shape, opts);
  at::Tensor B = torch::empty(b_shape, opts);
  at::Tensor b = s.lora_bias ? torch::empty({out_features()}, opts) : at::Tensor();
  if (s.lora_bias && !has_bias()) {
    warn("lora", "`lora_bias=True` was passed but the targeted " + to_string(kind_) +
                     " layer has no bias; merging this adapter will fail");
  }
  detail::init_linear_like_factors(s.init_lora_weights, s.r, A, B, b, to_string(kind_).c_str());
  init_from_weight(adapter, s, A, B);
  lora_A_->insert(adapter, std::make_shared<FactorImpl>(A, at::Tensor()));
  lora_B_->insert(adapter, std::make_shared<FactorImpl>(B, b));
}

void LoraLayerImpl::remove_factors(const std::string& adapter) {
  if (lora_A_) {
    lora_A_->erase(adapter);
    lora_B_->erase(adapter);
  }
}

at::Tensor LoraLayerImpl::scaled_product(const at::Tensor& B2, const at::Tensor& A2, const std::string& adapter) const {
  const auto dtype = A2.scalar_type();
  const bool upcast = A2.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
  if (!upcast) return at::matmul(B2.detach(), A2.detach()) * scaling(adapter);
  return (at::matmul(B2.detach().to(at::kFloat), A2.detach().to(at::kFloat)) * scaling(adapter)).to(dtype);
}

double LoraLayerImpl::dropout_p(const std::string& adapter) const {
  return settings_.at(adapter).lora_dropout;
}

void LoraLayerImpl::update_layer(const std::string& adapter, const AdapterSettings& settings) {
  PEFT_CHECK(settings.r > 0, ConfigError, "lora",
             "`r` should be a positive integer value but the value passed is " << settings.r);
  PEFT_CHECK(!(settings.use_dora && settings.lora_bias), ConfigError, "lora",
             "DoRA does not support lora_bias=True (adapter \"" << adapter << "\")");
  if (settings.alora_invocation_tokens) {
    PEFT_CHECK(is_linear(), UnsupportedError, "lora",
               "aLoRA (alora_invocation_tokens) supports Linear layers only; this layer is a " << to_string(kind_)
                                                                                           << " (hint: target only linear modules)");
    PEFT_CHECK(!settings.use_dora, ConfigError, "lora", "aLoRA cannot be combined with DoRA (use_dora=True)");
  }
  PEFT_CHECK(std::find(merged_.begin(), merged_.end(), adapter) == merged_.end(), Error, "lora",
             "cannot re-create adapter \"" << adapter << "\" while it is merged (hint: unmerge first)");
  if (has_adapter(adapter)) {
    destroy_adapter(adapter);
    if (lora_magnitude_vector_) lora_magnitude_vector_->erase(adapter);
  }
  create_adapter(adapter, settings);
  if (!has_adapter(adapter)) adapter_order_.push_back(adapter);
  settings_[adapter] = settings;
  scaling_[adapter] = settings.base_scaling();
  if (settings.use_dora) {
    // PEFT DoraLinearLayer.update_layer: m = ||W + scaling * B A|| per output channel (so DoRA is a no-op at init
    // when B A = 0); computed in float32 for half-precision factors (get_delta_weight does that on CPU).
    torch::NoGradGuard no_grad;
    const at::Tensor W = float_weight();
    at::Tensor delta = get_delta_weight(adapter).to(W.scalar_type());
    set_dora_magnitude(adapter, dora_weight_norm(W.detach(), delta));
  }
  // PEFT calls set_adapter(active_adapters) at the end: a new, inactive adapter starts frozen.
  set_active_adapters(active_, true);
  adapters_changed();
}

void LoraLayerImpl::adapters_changed() {
  mixed_cache_->clear();
  // Copy first: a callback may install or remove custom forwards.
  auto forwards = adapter_forwards_;
  for (auto& [name, f] : forwards) f->on_adapter_change(*this);
}

void LoraLayerImpl::delete_adapter(const std::string& adapter) {
  if (!has_adapter(adapter)) return;
  PEFT_CHECK(std::find(merged_.begin(), merged_.end(), adapter) == merged_.end(), Error, "delete_adapter",
             "Cannot delete adapter(s) [" << adapter << "] while they are merged. Please unmerge them first.");
  destroy_adapter(adapter);
  if (lora_magnitude_vector_) lora_magnitude_vector_->erase(adapter);
  tied_adapters_.erase(adapter);
  settings_.erase(adapter);
  scaling_.erase(adapter);
  adapter_order_.erase(std::remove(adapter_order_.begin(), adapter_order_.end(), adapter),
                       adapter_order_.end());
  active_.erase(std::remove(active_.begin(), active_.end(), adapter), active_.end());
  adapter_forwards_.erase(adapter);
  adapters_changed();
}

std::vector<std::string> LoraLayerImpl::adapter_names() const { return adapter_order_; }

const AdapterSettings& LoraLayerImpl::adapter_settings(const std::string& adapter) const {
  auto it = settings_.find(adapter);
  PEFT_CHECK(it != settings_.end(), AdapterNotFoundError, "lora",
             "layer has no adapter \"" << adapter << "\"");
  return it->second;
}

double LoraLayerImpl::scaling(const std::string& adapter) const {
  auto it = scaling_.find(adapter);
  PEFT_CHECK(it != scaling_.end(), AdapterNotFoundError, "lora", "layer has no adapter \"" << adapter << "\"");
  return it->second;
}

void LoraLayerImpl::set_scale(const std::string& adapter, double factor) {
  scaling_[adapter] = factor * adapter_settings(adapter).base_scaling();
  mixed_cache_->clear();
}

std::vector<std::pair<std::string, at::Tensor>> LoraLayerImpl::adapter_tensors(const std::string& adapter) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (lora_A_ && lora_A_->contains(adapter)) {
    auto a = lora_A_->get<FactorImpl>(adapter);
    auto b = lora_B_->get<FactorImpl>(adapter);
    out.emplace_back("lora_A.weight", a->weight);
    out.emplace_back("lora_B.weight", b->weight);
    if (b->bias.defined()) out.emplace_back("lora_B.bias", b->bias);
  }
  at::Tensor m = dora_magnitude(adapter);
  if (m.defined()) out.emplace_back("lora_magnitude_vector", m);
  return out;
}

at::Tensor LoraLayerImpl::adapter_tensor(const std::string& adapter, const std::string& key) const {
  for (auto& [k, t] : adapter_tensors(adapter)) {
    if (k == key) return t;
  }
  return {};
}

void LoraLayerImpl::set_active_adapters(const std::vector<std::string>& adapters, bool trainable) {
  if (merged()) {
    warn("lora", "Adapter cannot be set when the model is merged. Unmerging the model first.");
    unmerge();
  }
  active_ = adapters;
  for (const auto& name : adapter_order_) {
    bool on = trainable && std::find(active_.begin(), active_.end(), name) != active_.end();
    for (auto& [key, t] : adapter_tensors(name)) t.set_requires_grad(on);
  }
  for (auto& [name, slot] : tokens_) {
    bool on = trainable && std::find(active_.begin(), active_.end(), name) != active_.end();
    slot.delta.set_requires_grad(on);
  }
  if (modules_to_save_) {
    int active_copies = 0;
    for (const auto& name : modules_to_save_->keys()) {
      bool on = std::find(active_.begin(), active_.end(), name) != active_.end();
      active_copies += on ? 1 : 0;
      for (auto& [key, t] : trainable_copy_tensors(name)) t.set_requires_grad(on && trainable);
    }
    PEFT_CHECK(active_copies <= 1, Error, "set_adapter",
               "Expected only one adapter to be active for modules_to_save, found " << active_copies);
  }
}

void LoraLayerImpl::enable_adapters(bool enabled) {
  if (enabled) {
    enabled_ = true;
    set_active_adapters(active_, true);
    return;
  }
  // PEFT unmerges on the next forward of a disabled layer; doing it here keeps forward free of mutation.
  if (merged()) unmerge();
  enabled_ = false;
  for (const auto& name : adapter_order_) {
    for (auto& [key, t] : adapter_tensors(name)) t.set_requires_grad(false);
  }
  for (auto& [name, slot] : tokens_) slot.delta.set_requires_grad(false);
}

void LoraLayerImpl::merge(std::optional<std::vector<std::string>> adapters, bool safe_merge) {
  std::vector<std::string> names = adapters ? *adapters : active_;
  merge_tokens(names);
  std::vector<std::string> todo;
  for (const auto& n : names) {
    if (!has_adapter(n)) continue;
    if (std::find(merged_.begin(), merged_.end(), n) != merged_.end()) continue;
    PEFT_CHECK(!settings_.at(n).alora_invocation_tokens, UnsupportedError, "merge",
               "aLoRA adapter \"" << n << "\" cannot be merged: it acts only from the invocation sequence onwards "
                                      "(PEFT raises too)");
    if (auto f = adapter_forward(n)) {
      const std::string refusal = f->merge_refusal();
      PEFT_CHECK(refusal.empty(), UnsupportedError, "merge", refusal);
    }
    todo.push_back(n);
  }
  if (todo.empty()) {
    bool any = std::any_of(names.begin(), names.end(), [&](const auto& n) { return has_adapter(n); });
    if (any) warn("merge", "All adapters are already merged, nothing to do.");
    return;
  }
  torch::NoGradGuard no_grad;
  // weight_ itself for a float base (updated in place); a dequantized copy for a quantized one, committed below.
  at::Tensor W = float_weight();
  if (is_quantized()) {
    warn("merge", "Merge lora module to a quantized (" + to_string(kind_) +
                      ") layer may get different generations due to rounding errors.");
  }
  for (const auto& n : todo) {
    if (adapter_tied(n)) {
      merged_.push_back(n);  // the shared weight receives the delta through the source layer's merge
      continue;
    }
    at::Tensor delta = get_delta_weight(n).to(W.scalar_type());
    auto bias_delta = [&]() -> at::Tensor {
      for (auto& [key, t] : adapter_tensors(n)) {
        if (key == "lora_B.bias") return (t * scaling(n)).to(W.scalar_type());
      }
      return {};
    }();
    PEFT_CHECK(!bias_delta.defined() || has_bias(), Error, "merge",
               "adapter \"" << n << "\" has lora_bias=True but the base layer has no bias, so it cannot be merged");
    at::Tensor w;
    const at::Tensor m = dora_magnitude(n);
    if (m.defined()) {
      // PEFT DoRA merge: W' = (m / ||W + dW||) (W + dW), the norm cached for an exact unmerge.
      at::Tensor norm = dora_weight_norm(W, delta);
      dora_merge_norm_[n] = norm;
      w = (dora_factor_for_weight(m / norm) * (W + delta)).to(W.scalar_type());
    }
    if (safe_merge) {
      if (!w.defined()) w = W + delta;
      PEFT_CHECK(at::isfinite(w).all().item<bool>(), Error, "merge",
                 "NaNs detected in the merged weights. The adapter " << n << " seems to be broken");
      at::Tensor b;
      if (bias_delta.defined()) {
        b = bias_ + bias_delta;
        PEFT_CHECK(at::isfinite(b).all().item<bool>(), Error, "merge",
                   "NaNs detected in the merged weights. The adapter " << n << " seems to be broken");
      }
      W.copy_(w);
      if (b.defined()) bias_.copy_(b);
    } else {
      if (w.defined()) {
        W.copy_(w);
      } else {
        W.add_(delta);
      }
      if (bias_delta.defined()) bias_.add_(bias_delta);
    }
    merged_.push_back(n);
  }
  commit_float_weight(W);
}

void LoraLayerImpl::unmerge() {
  torch::NoGradGuard no_grad;
  if (merged_.empty()) {  // nothing to subtract: a quantized base is not dequantized for nothing
    unmerge_tokens();
    return;
  }
  at::Tensor W = float_weight();
  while (!merged_.empty()) {
    std::string n = merged_.back();
    merged_.pop_back();
    if (adapter_tied(n)) continue;
    at::Tensor delta = get_delta_weight(n).to(W.scalar_type());
    const at::Tensor m = dora_magnitude(n);
    if (m.defined() && dora_merge_norm_.count(n)) {
      at::Tensor factor = dora_factor_for_weight(m / dora_merge_norm_.at(n));
      dora_merge_norm_.erase(n);
      W.copy_((W / factor - delta).to(W.scalar_type()));
    } else {
      W.sub_(delta);
    }
    for (auto& [key, t] : adapter_tensors(n)) {
      if (key == "lora_B.bias") bias_.sub_((t * scaling(n)).to(bias_.scalar_type()));
    }
  }
  commit_float_weight(W);
  unmerge_tokens();
}

at::Tensor LoraLayerImpl::forward_with_adapters(const at::Tensor& x) const {
  const at::Tensor* w = &weight_;
  const at::Tensor* b = &bias_;
  std::shared_ptr<FactorImpl> copy;
  if (uses_trainable_copy()) {
    copy = modules_to_save_->get<FactorImpl>(active_.front());
    w = &copy->weight;
    b = &copy->bias;
  }
  const ForwardContext& context = current_forward_context();
  if (context.adapter_names && (!settings_.empty() || modules_to_save_ || !tokens_.empty())) {
    return forward_mixed(x, *context.adapter_names);
  }
  if (observer_) observer_(x);
  at::Tensor tokens_w = weight_with_tokens(*w);
  if (tokens_w.defined()) w = &tokens_w;
  at::Tensor result = base_forward(x, *w, *b);
  if (!enabled_ || merged() || settings_.empty()) return result;
  const auto dtype = result.scalar_type();
  for (const auto& name : active_) {
    if (!has_adapter(name)) continue;
    result = add_output(std::move(result), x, name);
  }
  return result.scalar_type() == dtype ? result : result.to(dtype);
}

void LoraLayerImpl::add_trainable_copy(const std::string& adapter, const at::Tensor& shared_weight) {
  if (!modules_to_save_) modules_to_save_ = register_module("modules_to_save", AdapterDict());
  torch::NoGradGuard no_grad;
  at::Tensor b = bias_.defined() ? bias_.detach().clone() : at::Tensor();
  PEFT_CHECK(!shared_weight.defined() || shared_weight.sizes() == weight_.sizes(), ShapeMismatchError,
             "modules_to_save", "a tied copy must have the weight's shape " << weight_.sizes() << "; got "
                                                                            << shared_weight.sizes());
  at::Tensor w = shared_weight.defined() ? shared_weight : float_weight().detach().clone();
  modules_to_save_->insert(adapter, std::make_shared<FactorImpl>(w, b));
  set_active_adapters(active_, true);
}

void LoraLayerImpl::delete_trainable_copy(const std::string& adapter) {
  if (modules_to_save_) modules_to_save_->erase(adapter);
}

bool LoraLayerImpl::has_trainable_copy(const std::string& adapter) const {
  return modules_to_save_ && modules_to_save_->contains(adapter);
}

std::vector<std::string> LoraLayerImpl::trainable_copy_names() const {
  return modules_to_save_ ? modules_to_save_->keys() : std::vector<std::string>{};
}

std::vector<std::pair<std::string, at::Tensor>> LoraLayerImpl::trainable_copy_tensors(
    const std::string& adapter) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (!has_trainable_copy(adapter)) return out;
  auto c = modules_to_save_->get<FactorImpl>(adapter);
  out.emplace_back("weight", c->weight);
  if (c->bias.defined()) out.emplace_back("bias", c->bias);
  return out;
}

void LoraLayerImpl::promote_trainable_copy(const std::string& adapter) {
  if (!has_trainable_copy(adapter)) return;
  torch::NoGradGuard no_grad;
  auto c = modules_to_save_->get<FactorImpl>(adapter);
  if (is_quantized()) {
    commit_float_weight(c->weight.detach());
  } else {
    weight_.copy_(c->weight);
  }
  if (bias_.defined() && c->bias.defined()) bias_.copy_(c->bias);
}

bool LoraLayerImpl::uses_trainable_copy() const {
  return enabled_ && modules_to_save_ && !active_.empty() && modules_to_save_->contains(active_.front());
}

void LoraLayerImpl::remove_all_adapters() {
  merged_.clear();  // the caller merged on purpose (merge_and_unload) or wants the adapters gone (unload)
  for (const auto& n : std::vector<std::string>(adapter_order_)) {
    destroy_adapter(n);
    settings_.erase(n);
    scaling_.erase(n);
  }
  adapter_order_.clear();
  if (lora_magnitude_vector_) {
    for (const auto& n : lora_magnitude_vector_->keys()) lora_magnitude_vector_->erase(n);
  }
  dora_merge_norm_.clear();
  tied_adapters_.clear();
  for (const auto& n : trainable_tokens_names()) delete_trainable_tokens(n);
  tokens_merged_.clear();
  if (modules_to_save_) {
    for (const auto& n : modules_to_save_->keys()) modules_to_save_->erase(n);
  }
  enabled_ = true;
}

void LoraLayerImpl::tie_adapter_to(const std::string& adapter, const std::shared_ptr<LoraLayerImpl>& source) {
  PEFT_CHECK(source && source.get() != this && source->has_adapter(adapter), Error, "ensure_weight_tying",
             "the tied source layer has no adapter \"" << adapter << "\"");
  PEFT_CHECK(kind_ == LayerKind::kLinear && source->kind() == LayerKind::kEmbedding, UnsupportedError,
             "ensure_weight_tying", "LoRA weight tying links a Linear output head to an Embedding; got a "
                                        << to_string(kind_) << " tied to a " << to_string(source->kind()));
  PEFT_CHECK(source->weight().is_same(weight_), ConfigError, "ensure_weight_tying",
             "the output head's weight is not the embedding's tensor, so the two layers are not tied");
  const AdapterSettings& s = source->adapter_settings(adapter);
  PEFT_CHECK(!s.use_dora, UnsupportedError, "ensure_weight_tying", "tied LoRA adapters cannot use DoRA");
  if (has_adapter(adapter)) delete_adapter(adapter);
  adapter_order_.push_back(adapter);
  settings_[adapter] = s;
  scaling_[adapter] = source->scaling(adapter);
  tied_adapters_[adapter] = source;
  set_active_adapters(active_, true);
}

std::shared_ptr<LoraLayerImpl> LoraLayerImpl::tied_source(const std::string& adapter) const {
  auto it = tied_adapters_.find(adapter);
  return it == tied_adapters_.end() ? nullptr : it->second.lock();
}

std::vector<std::pair<std::string, std::shared_ptr<LoraLayerImpl>>> lora_layers(torch::nn::Module& root) {
  std::vector<std::pair<std::string, std::shared_ptr<LoraLayerImpl>>> out;
  for (const auto& item : root.named_modules("", /*include_self=*/true)) {
    auto layer = std::dynamic_pointer_cast<LoraLayerImpl>(item.value());
    if (!layer) continue;
    bool nested = false;
    for (const auto& [name, outer] : out) {
      if (item.key().rfind(name + ".", 0) == 0) nested = true;
    }
    if (nested) continue;
    if (auto param = std::dynamic_pointer_cast<ParamLoraImpl>(layer)) {
      // PEFT's name for a parameter's LoRA: the owning module, inside one ParamWrapper per later-targeted
      // parameter of that module ("experts.base_layer" for the first of two).
      const std::string& key = item.key();
      const auto dot = key.rfind('.');
      std::string name = dot == std::string::npos ? std::string() : key.substr(0, dot);
      for (int i = 0; i < param->nesting(); ++i) name += name.empty() ? "base_layer" : ".base_layer";
      out.emplace_back(name, layer);
      continue;
    }
    out.emplace_back(item.key(), layer);
  }
  return out;
}

}  // namespace peft::nn
