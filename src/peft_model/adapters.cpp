// PeftModel's adapter management: configs, add / set / delete, disable_adapter, and which
// parameters train. PEFT counterparts: PeftModel.add_adapter / set_adapter / delete_adapter /
// disable_adapter, and BaseTuner._mark_only_adapters_as_trainable.
#include <algorithm>

#include "../strings.h"
#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

const PeftModelInfo& PeftModel::info() const { return model_info(*model_); }

void PeftModel::check_not_unloaded(const char* what) const {
  PEFT_CHECK(!unloaded_, Error, what,
             "the adapters were unloaded (merge_and_unload / unload); this PeftModel holds no "
             "adapters any more");
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
        if (n.find("lora_") != std::string::npos || n.find("modules_to_save.") != std::string::npos)
          continue;
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

const LoraConfig& PeftModel::peft_config(const std::string& adapter) const {
  auto it = configs_.find(adapter);
  if (it == configs_.end()) {
    const std::string names = detail::join(adapter_order_);
    throw AdapterNotFoundError(
        "peft_config", "Adapter " + adapter + " does not exist (adapters: [" + names + "])");
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

void PeftModel::add_adapter(const std::string& adapter_name, LoraConfig config,
                            bool autocast_adapter_dtype) {
  check_not_unloaded("add_adapter");
  PEFT_CHECK(!configs_.count(adapter_name), ConfigError, "add_adapter",
             "Adapter with name " << adapter_name << " already exists.");
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
               "Cannot delete adapter(s) ["
                   << adapter_name << "] while they are merged. Please unmerge them first.");
  }
  for (auto& [name, layer] : layers) detail::remove_adapter_everywhere(*layer, adapter_name);
  configs_.erase(adapter_name);
  adapter_order_.erase(std::remove(adapter_order_.begin(), adapter_order_.end(), adapter_name),
                       adapter_order_.end());
  const bool was_active = contains(active_, adapter_name);
  active_.erase(std::remove(active_.begin(), active_.end(), adapter_name), active_.end());
  if (was_active && active_.empty() && !adapter_order_.empty()) {
    std::vector<std::string> sorted = adapter_order_;
    std::sort(sorted.begin(), sorted.end());
    active_ = {sorted.front()};
    warn("delete_adapter", "Adapter " + adapter_name +
                               " was active which is now deleted. Setting active adapter to " +
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
    if (layer->modules_to_save() && layer->modules_to_save()->contains(adapter))
      out.push_back(name);
  }
  return out;
}

DisabledAdapterGuard::DisabledAdapterGuard(PeftModel& model)
    : model_(model), was_enabled_(model.enabled_) {
  model_.enabled_ = false;
  for (auto& [name, layer] : nn::lora_layers(*model_.model_)) layer->enable_adapters(false);
  model_.refresh_trainable();
}

DisabledAdapterGuard::~DisabledAdapterGuard() {
  if (!was_enabled_) return;
  model_.enabled_ = true;
  for (auto& [name, layer] : nn::lora_layers(*model_.model_)) layer->enable_adapters(true);
  // Divergence from PEFT: PEFT's exit makes the active adapters trainable even when they were
  // loaded with is_trainable=False; here the previous trainability is restored.
  model_.refresh_trainable();
}

}  // namespace peft
