// PeftModel: injection (PEFT inject_adapter), adapter management, merging and parameter counting.
#include "peft/peft_model.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <set>
#include <sstream>
#include <unordered_set>

#include "adapter_settings.h"
#include "peft/arrow.h"
#include "peft/error.h"
#include "strings.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/lora/param.h"
#include "peft/targeting.h"

namespace peft {
namespace {

const PeftModelInfo& default_info() {
  static const PeftModelInfo info;
  return info;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Fields whose feature lands in a later issue: parsed and kept, but refused when used.
void check_supported(const LoraConfig& c) {
  std::vector<std::string> used;
  if (c.use_qalora) used.push_back("use_qalora");
  if (c.megatron_config) used.push_back("megatron_config");
  if (c.velora_config) used.push_back("velora_config");
  if (c.monteclora_config) used.push_back("monteclora_config");
  if (c.use_bdlora) used.push_back("use_bdlora");
  if (c.kasa_config) used.push_back("kasa_config");
  using K = InitLoraWeights::Kind;
  const auto k = c.init_lora_weights.kind;
  if (k == K::kMica) {
    used.push_back("init_lora_weights=\"" + to_string(c.init_lora_weights) + "\"");
  }
  if (used.empty()) return;
  const std::string list = detail::join(used);
  throw UnsupportedError("get_peft_model", "LoraConfig uses " + list +
                                               ", which peft.cpp does not implement yet (hint: these land with "
                                               "later releases; the field is kept when a config is read and written)");
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

namespace {

// The adapter-ready layers that target_modules can match: every LoRA layer but the parameter slots
// (target_parameters), whose names are those of their owning modules.
std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> module_layers(torch::nn::Module& model) {
  auto layers = nn::lora_layers(model);
  layers.erase(std::remove_if(layers.begin(), layers.end(),
                              [](const auto& e) { return e.second->kind() == nn::LayerKind::kParam; }),
               layers.end());
  return layers;
}

std::vector<ModuleInfo> module_infos(torch::nn::Module& model) {
  auto all_layers = module_layers(model);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(), all_layers.end());
  std::vector<ModuleInfo> modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    // Children of adapter-ready layers (lora_A, copies, ...) are never targets (PEFT skips tuner internals).
    bool internal = false;
    for (const auto& [lname, layer] : all_layers) {
      if (name.size() > lname.size() && name.compare(0, lname.size() + 1, lname + ".") == 0) internal = true;
    }
    auto it = layer_by_name.find(name);
    ModuleInfo m;
    m.name = name;
    m.under_adapter = internal;
    m.type = internal ? "adapter internals" : (it != layer_by_name.end() ? nn::to_string(it->second->kind()) : "Module");
    if (internal) {
      modules.push_back(std::move(m));
      continue;
    }
    m.adaptable = it != layer_by_name.end();
    m.is_linear = m.adaptable && it->second->is_linear();
    modules.push_back(std::move(m));
  }
  return modules;
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> find_target_layers(torch::nn::Module& model,
                                                                                           const LoraConfig& config) {
  auto* mi = dynamic_cast<const PeftModelInfo*>(&model);
  const PeftModelInfo& inf = mi ? *mi : default_info();
  TargetingResult targets =
      find_targets(config, module_infos(model), inf.default_target_modules(), inf.output_embedding_name());
  auto all_layers = module_layers(model);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(), all_layers.end());
  std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> out;
  for (const auto& name : targets.targeted) out.emplace_back(name, layer_by_name.at(name));
  return out;
}

void PeftModelInfo::replicate_layers(const std::vector<std::pair<int64_t, int64_t>>& /*ranges*/) {
  throw ConfigError("layer_replication",
                    "Could not locate the layers attribute in the model (model type \"" + model_type() +
                        "\"); layer_replication needs a model with a list of transformer layers (hint: the model "
                        "zoo's Llama family, GPT-2 and BERT/RoBERTa support it)");
}

// ---------------------------------------------------------------------------------------------------------
// construction and injection

PeftModel::PeftModel(std::shared_ptr<torch::nn::Module> model, LoraConfig config, const std::string& adapter_name,
                     bool autocast_adapter_dtype)
    : model_(std::move(model)) {
  PEFT_CHECK(model_ != nullptr, Error, "get_peft_model", "model is null");
  if (!adapter_name.empty() && std::string("lora_").find(adapter_name) != std::string::npos) {
    warn("get_peft_model", "Adapter name \"" + adapter_name +
                               "\" should not be contained in the prefix \"lora_\". This may lead to reinitialization "
                               "of the adapter weights during loading.");
  }
  config.validate();
  check_supported(config);
  inject(adapter_name, config);
  configs_.emplace(adapter_name, std::move(config));
  adapter_order_.push_back(adapter_name);
  active_ = {adapter_name};
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->set_active_adapters(active_, true);
  refresh_trainable();
  if (autocast_adapter_dtype) cast_adapter_dtype(adapter_name);
}

std::shared_ptr<PeftModel> get_peft_model(std::shared_ptr<torch::nn::Module> model, LoraConfig config,
                                          const std::string& adapter_name) {
  return std::make_shared<PeftModel>(std::move(model), std::move(config), adapter_name);
}

const PeftModelInfo& PeftModel::info() const {
  auto* i = dynamic_cast<const PeftModelInfo*>(model_.get());
  return i ? *i : default_info();
}

void PeftModel::check_not_unloaded(const char* what) const {
  PEFT_CHECK(!unloaded_, Error, what,
             "the adapters were unloaded (merge_and_unload / unload); this PeftModel holds no adapters any more");
}

void PeftModel::inject(const std::string& adapter_name, LoraConfig& config) {
  // PEFT: "LoraModel supports only 1 adapter with bias."
  if (config.bias != Bias::kNone) {
    for (const auto& [name, c] : configs_) {
      PEFT_CHECK(c.bias == Bias::kNone, ConfigError, "add_adapter",
                 "LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' "
                 "for all adapters (adapter \"" << name << "\" already has bias=" << to_string(c.bias) << ")");
    }
  }
  // PeftModelForSequenceClassification / TokenClassification add their heads to modules_to_save.
  if (config.task_type == TaskType::kSeqCls || config.task_type == TaskType::kTokenCls) {
    std::vector<std::string> mts = config.modules_to_save.value_or(std::vector<std::string>{});
    for (const char* head : {"classifier", "score"}) {
      if (!contains(mts, head)) mts.push_back(head);
    }
    config.modules_to_save = mts;
  }

  if (config.layer_replication) {
    // PEFT _prepare_model: replicate_layers before matching, so that targets use the new layer indices.
    auto* mi = dynamic_cast<PeftModelInfo*>(model_.get());
    PeftModelInfo fallback;
    (mi ? *mi : fallback).replicate_layers(*config.layer_replication);
  }
  auto all_layers = module_layers(*model_);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(), all_layers.end());
  std::vector<ModuleInfo> modules = module_infos(*model_);
  TargetingResult targets =
      find_targets(config, modules, info().default_target_modules(), info().output_embedding_name());
  config.target_modules = targets.resolved_target_modules;

  // modules_to_save: plain suffix match (PEFT's str.endswith, no dot boundary). PEFT wraps the matched module
  // whole; here every adapter-ready layer in it gets a trainable copy, which gives the same parameters, the
  // same forward and the same checkpoint keys (<module>.<child>.weight).
  std::vector<std::shared_ptr<nn::LoraLayerImpl>> copies;
  if (config.modules_to_save) {
    std::set<const nn::LoraLayerImpl*> seen;
    for (const auto& m : modules) {
      if (m.under_adapter) continue;
      for (const auto& entry : *config.modules_to_save) {
        if (m.name.size() < entry.size() || m.name.compare(m.name.size() - entry.size(), entry.size(), entry) != 0) {
          continue;
        }
        std::vector<std::shared_ptr<nn::LoraLayerImpl>> found;
        for (const auto& [lname, layer] : all_layers) {
          if (lname == m.name || lname.rfind(m.name + ".", 0) == 0) found.push_back(layer);
        }
        PEFT_CHECK(!found.empty(), UnsupportedError, "modules_to_save",
                   "module \"" << m.name << "\" matches modules_to_save entry \"" << entry
                               << "\" but neither is nor contains an adapter-ready peft::nn layer (hint: build it from "
                                  "peft::nn::Linear / Embedding / Conv* so that a trainable copy can replace it)");
        for (auto& layer : found) {
          PEFT_CHECK(layer->adapter_names().empty() || !layer->has_adapter(adapter_name), UnsupportedError,
                     "modules_to_save", "module \"" << m.name << "\" already carries LoRA adapter \"" << adapter_name << "\"");
          if (seen.insert(layer.get()).second) copies.push_back(layer);
        }
        break;
      }
    }
  }

  std::vector<std::shared_ptr<nn::LoraLayerImpl>> touched;
  try {
    const auto [tied_head, tied_embedding] = plan_lora_weight_tying(config, targets.targeted);
    for (const auto& name : targets.targeted) {
      auto layer = layer_by_name.at(name);
      const nn::AdapterSettings s = detail::adapter_settings_for(config, name);
      if (layer->kind() == nn::LayerKind::kConv1D && !config.fan_in_fan_out) {
        warn("get_peft_model", "fan_in_fan_out is set to False but the target module `" + name +
                                   "` is `Conv1D`. Setting fan_in_fan_out to True.");
        config.fan_in_fan_out = true;
      } else if (layer->kind() == nn::LayerKind::kLinear && config.fan_in_fan_out) {
        warn("get_peft_model", "fan_in_fan_out is set to True but the target module `" + name +
                                   "` is `torch.nn.Linear`. Setting fan_in_fan_out to False.");
        config.fan_in_fan_out = false;
      }
      touched.push_back(layer);
      layer->update_layer(adapter_name, s);
      if (config.arrow_config) {
        // PEFT resolves the Arrow variant per layer type: Linear (and GPT-2 Conv1D) only.
        PEFT_CHECK(layer->is_linear(), ConfigError, "add_adapter",
                   "Invalid or unsupported variant combination: arrow_config on " << name << " ("
                                                                                 << nn::to_string(layer->kind())
                                                                                 << "); only Linear layers support Arrow");
        auto router = std::make_shared<ArrowForward>(*config.arrow_config);
        layer->set_adapter_forward(adapter_name, router);
        router->on_adapter_change(*layer);
      }
    }
    if (!tied_head.empty()) {
      auto head = layer_by_name.at(tied_head);
      touched.push_back(head);
      head->tie_adapter_to(adapter_name, layer_by_name.at(tied_embedding));
    }
    const size_t params = add_parameter_targets(adapter_name, config, touched);
    if (targets.targeted.empty() && params == 0 && config.target_parameters && !config.target_parameters->empty()) {
      throw NoMatchingModuleError(
          "targeting", "Target modules and target parameters " + detail::join(*config.target_parameters) +
                           " not found in the base model. Please check the target modules / parameters and try "
                           "again (hint: parameters match as <module>.<parameter> by full name or dotted suffix, "
                           "e.g. \"mlp.experts.gate_up_proj\")");
    }
    add_trainable_copies(adapter_name, config, copies, touched);
    add_trainable_tokens(adapter_name, config, touched);
  } catch (...) {
    for (auto& layer : touched) {
      layer->delete_adapter(adapter_name);
      layer->delete_trainable_copy(adapter_name);
      layer->delete_trainable_tokens(adapter_name);
    }
    throw;
  }
}

void PeftModel::cast_adapter_dtype(const std::string& adapter_name) {
  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (!layer->has_adapter(adapter_name)) continue;
    for (auto& [key, t] : layer->adapter_tensors(adapter_name)) {
      if (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) t.set_data(t.to(at::kFloat));
    }
  }
}

void PeftModel::refresh_trainable() {
  // PEFT _mark_only_adapters_as_trainable + bias modes + inference_mode.
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  if (active_.empty()) return;
  bool inference = true;
  for (const auto& a : active_) inference = inference && configs_.at(a).inference_mode;
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    layer->set_active_adapters(active_, !inference && enabled_);
  }
  if (!enabled_) return;
  for (const auto& a : active_) {
    const LoraConfig& c = configs_.at(a);
    if (c.bias == Bias::kAll) {
      for (auto& item : model_->named_parameters()) {
        const std::string& n = item.key();
        if (n.find("lora_") != std::string::npos || n.find("modules_to_save.") != std::string::npos) continue;
        if (n == "bias" || (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0)) {
          item.value().set_requires_grad(true);
        }
      }
    } else if (c.bias == Bias::kLoraOnly) {
      for (auto& [name, layer] : nn::lora_layers(*model_)) {
        if (layer->has_adapter(a) && layer->has_bias()) layer->bias().set_requires_grad(true);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// adapter management

const LoraConfig& PeftModel::peft_config(const std::string& adapter) const {
  auto it = configs_.find(adapter);
  if (it == configs_.end()) {
    const std::string names = detail::join(adapter_order_);
    throw AdapterNotFoundError("peft_config", "Adapter " + adapter + " does not exist (adapters: [" + names + "])");
  }
  return it->second;
}

void PeftModel::update_peft_config(const std::string& adapter, LoraConfig config) {
  peft_config(adapter);  // throws AdapterNotFoundError
  configs_[adapter] = std::move(config);
}

const std::string& PeftModel::active_adapter() const {
  PEFT_CHECK(!active_.empty(), AdapterNotFoundError, "active_adapter", "no adapter is active");
  return active_.front();
}

void PeftModel::add_adapter(const std::string& adapter_name, LoraConfig config, bool autocast_adapter_dtype) {
  check_not_unloaded("add_adapter");
  PEFT_CHECK(!configs_.count(adapter_name), ConfigError, "add_adapter",
             "Adapter with name " << adapter_name << " already exists.");
  config.validate();
  check_supported(config);
  inject(adapter_name, config);
  configs_.emplace(adapter_name, std::move(config));
  adapter_order_.push_back(adapter_name);
  // The new adapter is not activated: re-apply the previous active set (freezes it).
  refresh_trainable();
  if (autocast_adapter_dtype) cast_adapter_dtype(adapter_name);
}

void PeftModel::set_adapter(const std::string& adapter_name, bool inference_mode) {
  set_adapters({adapter_name}, inference_mode);
}

void PeftModel::set_adapters(const std::vector<std::string>& adapter_names, bool inference_mode) {
  check_not_unloaded("set_adapter");
  for (const auto& a : adapter_names) peft_config(a);  // throws AdapterNotFoundError
  active_ = adapter_names;
  for (const auto& a : adapter_names) configs_.at(a).inference_mode = inference_mode;
  refresh_trainable();
}

void PeftModel::delete_adapter(const std::string& adapter_name) {
  check_not_unloaded("delete_adapter");
  peft_config(adapter_name);
  auto layers = nn::lora_layers(*model_);
  for (auto& [name, layer] : layers) {
    PEFT_CHECK(!contains(layer->merged_adapters(), adapter_name), Error, "delete_adapter",
               "Cannot delete adapter(s) [" << adapter_name << "] while they are merged. Please unmerge them first.");
  }
  for (auto& [name, layer] : layers) {
    layer->delete_adapter(adapter_name);
    layer->delete_trainable_copy(adapter_name);
    layer->delete_trainable_tokens(adapter_name);
  }
  configs_.erase(adapter_name);
  adapter_order_.erase(std::remove(adapter_order_.begin(), adapter_order_.end(), adapter_name),
                       adapter_order_.end());
  const bool was_active = contains(active_, adapter_name);
  active_.erase(std::remove(active_.begin(), active_.end(), adapter_name), active_.end());
  if (was_active && active_.empty() && !adapter_order_.empty()) {
    std::vector<std::string> sorted = adapter_order_;
    std::sort(sorted.begin(), sorted.end());
    active_ = {sorted.front()};
    warn("delete_adapter", "Adapter " + adapter_name + " was active which is now deleted. Setting active adapter to " +
                               sorted.front() + ".");
  }
  refresh_trainable();
}

std::vector<std::string> PeftModel::targeted_module_names(const std::string& adapter) const {
  std::vector<std::string> out;
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (layer->has_adapter(adapter)) out.push_back(name);
  }
  return out;
}

std::vector<std::string> PeftModel::modules_to_save_names(const std::string& adapter) const {
  std::vector<std::string> out;
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (layer->has_trainable_copy(adapter)) out.push_back(name);
  }
  return out;
}

DisabledAdapterGuard::DisabledAdapterGuard(PeftModel& model) : model_(model), was_enabled_(model.enabled_) {
  model_.enabled_ = false;
  for (auto& [name, layer] : nn::lora_layers(*model_.model_)) layer->enable_adapters(false);
  model_.refresh_trainable();
}

DisabledAdapterGuard::~DisabledAdapterGuard() {
  if (!was_enabled_) return;
  model_.enabled_ = true;
  for (auto& [name, layer] : nn::lora_layers(*model_.model_)) layer->enable_adapters(true);
  // Divergence from PEFT: PEFT's exit makes the active adapters trainable even when they were loaded with
  // is_trainable=False; here the previous trainability is restored.
  model_.refresh_trainable();
}

// ---------------------------------------------------------------------------------------------------------
// merging

void PeftModel::check_merge_allowed() const {
  for (const auto& [name, c] : configs_) {
    // Divergence from PEFT: PEFT's guard looks the key up in the wrong dict and never fires, so merging a
    // replicated model adds every copy's update to the one shared weight (huggingface/peft#1707). Refuse instead.
    PEFT_CHECK(!c.layer_replication || c.layer_replication->empty(), UnsupportedError, "merge",
               "adapter \"" << name << "\" uses layer_replication: the replicated layers share their base weights, so "
                            "merging would add every copy's update to the same weight (hint: keep the adapters "
                            "unmerged, or merge into a model whose layers were materialised with separate weights)");
  }
}

void PeftModel::merge_adapter(std::optional<std::vector<std::string>> adapter_names, bool safe_merge) {
  check_not_unloaded("merge_adapter");
  check_merge_allowed();
  if (adapter_names) {
    for (const auto& a : *adapter_names) peft_config(a);
  }
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->merge(adapter_names, safe_merge);
}

void PeftModel::unmerge_adapter() {
  check_not_unloaded("unmerge_adapter");
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->unmerge();
}

std::shared_ptr<torch::nn::Module> PeftModel::merge_and_unload(bool safe_merge,
                                                               std::optional<std::vector<std::string>> adapter_names,
                                                               QuantizedMerge quantized) {
  check_not_unloaded("merge_and_unload");
  check_merge_allowed();
  if (adapter_names) {
    for (const auto& a : *adapter_names) peft_config(a);
  }
  auto layers = nn::lora_layers(*model_);
  for (auto& [name, layer] : layers) {
    if (quantized == QuantizedMerge::kDequantize && layer->is_quantized()) {
      if (auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer)) linear->dequantize();
    }
  }
  for (auto& [name, layer] : layers) {
    if (!layer->adapters_enabled()) layer->enable_adapters(true);
    layer->merge(adapter_names, safe_merge);
  }
  return unload();
}

std::shared_ptr<torch::nn::Module> PeftModel::unload() {
  check_not_unloaded("unload");
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (!active_.empty()) layer->promote_trainable_copy(active_.front());
    layer->remove_all_adapters();
  }
  // target_parameters: the parameters keep their (merged) values; their LoRA slots go.
  for (auto& item : model_->named_modules("", /*include_self=*/true)) {
    if (auto owner = std::dynamic_pointer_cast<nn::ParamModuleImpl>(item.value())) {
      for (const auto& p : owner->targeted_parameters()) owner->detach_param_lora(p);
    }
  }
  configs_.clear();
  adapter_order_.clear();
  active_.clear();
  unloaded_ = true;
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  return model_;
}

// ---------------------------------------------------------------------------------------------------------
// parameters

std::pair<int64_t, int64_t> PeftModel::get_nb_trainable_parameters() const {
  int64_t trainable = 0;
  int64_t all = 0;
  std::unordered_set<const void*> seen;  // shared (tied) tensors count once, as named_parameters() does
  for (const auto& p : model_->parameters()) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    all += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  return {trainable, all};
}

std::string PeftModel::trainable_parameters_line() const {
  auto [trainable, all] = get_nb_trainable_parameters();
  char pct[64];
  std::snprintf(pct, sizeof(pct), "%.4f", all > 0 ? 100.0 * static_cast<double>(trainable) / static_cast<double>(all) : 0.0);
  return "trainable params: " + with_commas(trainable) + " || all params: " + with_commas(all) +
         " || trainable%: " + pct;
}

void PeftModel::print_trainable_parameters() const { std::cout << trainable_parameters_line() << std::endl; }

}  // namespace peft
