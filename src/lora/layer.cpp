// Adapter bookkeeping of every adapter-ready layer (PEFT LoraLayer.update_layer, delete_adapter,
// set_adapter, enable_adapters, set_scale): settings, scaling, variants, active set, and the
// auxiliary child modules.
#include "peft/lora/layer.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

#include "init_weights.h"
#include "mixed_kernel.h"
#include "peft/error.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/param.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/lora/variant.h"
#include "variants/tied.h"

namespace peft::nn {

std::string to_string(LayerKind kind) {
  switch (kind) {
    case LayerKind::kLinear:
      return "Linear";
    case LayerKind::kConv1D:
      return "Conv1D";
    case LayerKind::kEmbedding:
      return "Embedding";
    case LayerKind::kConv1d:
      return "Conv1d";
    case LayerKind::kConv2d:
      return "Conv2d";
    case LayerKind::kConv3d:
      return "Conv3d";
    case LayerKind::kParam:
      return "Parameter";
  }
  return "?";
}

double AdapterSettings::base_scaling() const {
  return use_rslora ? lora_alpha / std::sqrt(static_cast<double>(r)) : lora_alpha / r;
}

LoraLayerImpl::LoraLayerImpl(LayerKind kind)
    : mixed_cache_(std::make_shared<mixed::MixedCache>()), kind_(kind) {}
LoraLayerImpl::~LoraLayerImpl() = default;

void LoraLayerImpl::register_base(at::Tensor weight, at::Tensor bias) {
  weight_ = register_parameter("weight", std::move(weight));
  if (bias.defined()) bias_ = register_parameter("bias", std::move(bias));
}

void LoraLayerImpl::set_base_weights(const at::Tensor& weight, const at::Tensor& bias) {
  torch::NoGradGuard no_grad;
  if (is_quantized()) {
    commit_float_weight(weight.detach());
  } else {
    weight_.copy_(weight);
  }
  if (bias_.defined() && bias.defined()) bias_.copy_(bias);
}

void LoraLayerImpl::add_factors(const std::string& adapter, const AdapterSettings& s,
                                const std::vector<int64_t>& a_shape,
                                const std::vector<int64_t>& b_shape) {
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
  init_from_weight(s, A, B);
  lora_A_->insert(adapter, std::make_shared<FactorImpl>(A, at::Tensor()));
  lora_B_->insert(adapter, std::make_shared<FactorImpl>(B, b));
}

void LoraLayerImpl::set_factor_weight(const std::string& adapter, bool a_side, at::Tensor weight) {
  PEFT_CHECK(lora_A_ && lora_A_->contains(adapter), AdapterNotFoundError, "lora",
             "layer has no lora_A / lora_B for adapter \"" << adapter << "\"");
  auto& dict = a_side ? lora_A_ : lora_B_;
  const at::Tensor bias = dict->get<FactorImpl>(adapter)->bias;
  dict->insert(adapter, std::make_shared<FactorImpl>(std::move(weight), bias));
  mixed_cache_->clear();
}

void LoraLayerImpl::remove_factors(const std::string& adapter) {
  if (lora_A_) {
    lora_A_->erase(adapter);
    lora_B_->erase(adapter);
  }
}

at::Tensor LoraLayerImpl::scaled_product(const at::Tensor& B2, const at::Tensor& A2,
                                         const std::string& adapter) const {
  const auto dtype = A2.scalar_type();
  const bool upcast = A2.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
  if (!upcast) return at::matmul(B2.detach(), A2.detach()) * scaling(adapter);
  return (at::matmul(B2.detach().to(at::kFloat), A2.detach().to(at::kFloat)) * scaling(adapter))
      .to(dtype);
}

void LoraLayerImpl::update_layer(const std::string& adapter, const AdapterSettings& settings) {
  PEFT_CHECK(settings.r > 0, ConfigError, "lora",
             "`r` should be a positive integer value but the value passed is " << settings.r);
  PEFT_CHECK(
      std::find(merged_.begin(), merged_.end(), adapter) == merged_.end(), Error, "lora",
      "cannot re-create adapter \"" << adapter << "\" while it is merged (hint: unmerge first)");
  // PEFT resolves the variant first, so an unsupported combination fails before anything is
  // created.
  std::shared_ptr<LoraVariant> variant = resolve_lora_variant(*this, settings);
  if (has_adapter(adapter)) {
    if (auto old = variants_[adapter]) old->remove(*this, adapter);
    variants_.erase(adapter);
    destroy_adapter(adapter);
  }
  create_adapter(adapter, settings);
  if (!has_adapter(adapter)) adapter_order_.push_back(adapter);
  settings_[adapter] = settings;
  scaling_[adapter] = settings.base_scaling();
  if (variant) {
    variants_[adapter] = variant;
    variant->init(*this, adapter);
  }
  // PEFT calls set_adapter(active_adapters) at the end: a new, inactive adapter starts frozen.
  set_active_adapters(active_, true);
  adapters_changed();
}

void LoraLayerImpl::tie_adapter_to(const std::string& adapter,
                                   const std::shared_ptr<LoraLayerImpl>& source) {
  PEFT_CHECK(source && source.get() != this && source->has_adapter(adapter), Error,
             "ensure_weight_tying", "the tied source layer has no adapter \"" << adapter << "\"");
  auto variant = variants::make_tied_variant(*this, source, adapter);
  if (has_adapter(adapter)) delete_adapter(adapter);
  adapter_order_.push_back(adapter);
  settings_[adapter] = source->adapter_settings(adapter);
  scaling_[adapter] = source->scaling(adapter);
  variants_[adapter] = std::move(variant);
  set_active_adapters(active_, true);
  adapters_changed();
}

void LoraLayerImpl::adapters_changed() {
  mixed_cache_->clear();
  // Copy first: a callback may change the layer's adapters.
  auto variants = variants_;
  for (auto& [name, v] : variants) v->on_adapter_change(*this);
}

void LoraLayerImpl::delete_adapter(const std::string& adapter) {
  if (!has_adapter(adapter)) return;
  PEFT_CHECK(std::find(merged_.begin(), merged_.end(), adapter) == merged_.end(), Error,
             "delete_adapter",
             "Cannot delete adapter(s) [" << adapter
                                          << "] while they are merged. Please unmerge them first.");
  auto it = variants_.find(adapter);
  if (it != variants_.end()) {
    it->second->remove(*this, adapter);
    variants_.erase(it);
  }
  destroy_adapter(adapter);
  settings_.erase(adapter);
  scaling_.erase(adapter);
  adapter_order_.erase(std::remove(adapter_order_.begin(), adapter_order_.end(), adapter),
                       adapter_order_.end());
  active_.erase(std::remove(active_.begin(), active_.end(), adapter), active_.end());
  adapters_changed();
}

const AdapterSettings& LoraLayerImpl::adapter_settings(const std::string& adapter) const {
  auto it = settings_.find(adapter);
  PEFT_CHECK(it != settings_.end(), AdapterNotFoundError, "lora",
             "layer has no adapter \"" << adapter << "\"");
  return it->second;
}

double LoraLayerImpl::scaling(const std::string& adapter) const {
  auto it = scaling_.find(adapter);
  PEFT_CHECK(it != scaling_.end(), AdapterNotFoundError, "lora",
             "layer has no adapter \"" << adapter << "\"");
  return it->second;
}

void LoraLayerImpl::set_scale(const std::string& adapter, double factor) {
  scaling_[adapter] = factor * adapter_settings(adapter).base_scaling();
  mixed_cache_->clear();
}

std::vector<std::pair<std::string, at::Tensor>> LoraLayerImpl::factor_tensors(
    const std::string& adapter) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (lora_A_ && lora_A_->contains(adapter)) {
    auto b = lora_B_->get<FactorImpl>(adapter);
    out.emplace_back("lora_A.weight", lora_A_->get<FactorImpl>(adapter)->weight);
    out.emplace_back("lora_B.weight", b->weight);
    if (b->bias.defined()) out.emplace_back("lora_B.bias", b->bias);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> LoraLayerImpl::adapter_tensors(
    const std::string& adapter) const {
  auto out = factor_tensors(adapter);
  if (auto v = variant(adapter)) v->append_tensors(*this, adapter, out);
  return out;
}

at::Tensor LoraLayerImpl::adapter_tensor(const std::string& adapter, const std::string& key) const {
  for (auto& [k, t] : adapter_tensors(adapter)) {
    if (k == key) return t;
  }
  return {};
}

std::shared_ptr<LoraVariant> LoraLayerImpl::variant(const std::string& adapter) const {
  auto it = variants_.find(adapter);
  return it == variants_.end() ? nullptr : it->second;
}

void LoraLayerImpl::set_active_adapters(const std::vector<std::string>& adapters, bool trainable) {
  if (merged()) {
    warn("lora", "Adapter cannot be set when the model is merged. Unmerging the model first.");
    unmerge();
  }
  active_ = adapters;
  for (const auto& name : adapter_order_) {
    const bool on = trainable && std::find(active_.begin(), active_.end(), name) != active_.end();
    const auto v = variant(name);
    for (auto& [key, t] : adapter_tensors(name))
      t.set_requires_grad(on && !(v && v->keeps_frozen(key)));
  }
  if (tokens_) tokens_->set_trainable(active_, trainable);
  if (modules_to_save_) modules_to_save_->set_trainable(active_, trainable);
}

void LoraLayerImpl::enable_adapters(bool enabled) {
  if (enabled) {
    enabled_ = true;
    set_active_adapters(active_, true);
    return;
  }
  // PEFT unmerges on the next forward of a disabled layer; doing it here keeps forward free of
  // mutation.
  if (merged()) unmerge();
  enabled_ = false;
  for (const auto& name : adapter_order_) {
    for (auto& [key, t] : adapter_tensors(name)) t.set_requires_grad(false);
  }
  if (tokens_) tokens_->set_trainable(active_, false);
}

TrainableTokensImpl& LoraLayerImpl::ensure_trainable_tokens() {
  PEFT_CHECK(kind_ == LayerKind::kEmbedding || kind_ == LayerKind::kLinear, UnsupportedError,
             "trainable_tokens",
             "trainable tokens need an Embedding (or a Linear tied to one); this layer is a "
                 << to_string(kind_));
  if (!tokens_) tokens_ = register_module("token_adapter", std::make_shared<TrainableTokensImpl>());
  return *tokens_;
}

ModulesToSaveImpl& LoraLayerImpl::ensure_modules_to_save() {
  if (!modules_to_save_)
    modules_to_save_ = register_module("modules_to_save", std::make_shared<ModulesToSaveImpl>());
  return *modules_to_save_;
}

AdapterDictImpl& LoraLayerImpl::adapter_dict(const std::string& name) {
  auto it = adapter_dicts_.find(name);
  if (it != adapter_dicts_.end()) return *it->second;
  auto dict = register_module(name, AdapterDict());
  adapter_dicts_.emplace(name, dict);
  return *dict;
}

const AdapterDictImpl* LoraLayerImpl::find_adapter_dict(const std::string& name) const {
  auto it = adapter_dicts_.find(name);
  return it == adapter_dicts_.end() ? nullptr : it->second.get();
}

std::vector<std::pair<std::string, std::shared_ptr<LoraLayerImpl>>> lora_layers(
    torch::nn::Module& root) {
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
      // PEFT's name for a parameter's LoRA: the owning module, inside one ParamWrapper per
      // later-targeted parameter of that module ("experts.base_layer" for the first of two).
      const std::string& key = item.key();
      const auto dot = key.rfind('.');
      std::string name = dot == std::string::npos ? std::string() : key.substr(0, dot);
      for (int i = 0; i < param->nesting(); ++i)
        name += name.empty() ? "base_layer" : ".base_layer";
      out.emplace_back(name, layer);
      continue;
    }
    out.emplace_back(item.key(), layer);
  }
  return out;
}

}  // namespace peft::nn
