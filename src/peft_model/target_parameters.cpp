// target_parameters: PEFT's BaseTuner._inject_parameters (LoRA on raw parameters, ParamWrapper) for
// modules built on peft::nn::ParamModuleImpl, and on the weights of adapter-ready Linear layers.
#include <ATen/ATen.h>

#include <algorithm>

#include "../strings.h"
#include "adapter_settings.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/param.h"
#include "peft/peft_model.h"
#include "peft/targeting.h"

namespace peft {
namespace {

bool matches(const std::string& key, const std::vector<std::string>& entries) {
  for (const auto& e : entries) {
    if (key == e) return true;
    if (key.size() > e.size() && key.compare(key.size() - e.size(), e.size(), e) == 0 &&
        key[key.size() - e.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

}  // namespace

size_t PeftModel::add_parameter_targets(const std::string& adapter_name, const LoraConfig& config,
                                        std::vector<std::shared_ptr<nn::LoraLayerImpl>>& touched) {
  if (!config.target_parameters || config.target_parameters->empty()) return 0;
  // The docs' caveat: "It is currently not possible to add multiple LoRA adapters ... that use
  // target_parameters at the same time."
  for (const auto& [name, c] : configs_) {
    PEFT_CHECK(
        name == adapter_name || !c.target_parameters || c.target_parameters->empty(),
        UnsupportedError, "add_adapter",
        "adapter \""
            << adapter_name << "\" uses target_parameters, but adapter \"" << name
            << "\" already does; PEFT cannot hold two adapters with target_parameters at the same "
               "time (hint: delete_adapter(\""
            << name << "\") first, or merge_and_unload it into the base)");
  }
  PEFT_CHECK(!config.fan_in_fan_out, ConfigError, "target_parameters",
             "lora.ParamWrapper does not work with fan_in_fan_out=True");
  const auto& entries = *config.target_parameters;
  // LoRA layers and everything under them are tuner internals, never scanned (PEFT skips its own
  // modules).
  std::vector<std::string> internal_prefixes;
  for (const auto& item : model_->named_modules("", /*include_self=*/true)) {
    if (std::dynamic_pointer_cast<nn::LoraLayerImpl>(item.value()))
      internal_prefixes.push_back(item.key());
  }
  auto is_internal = [&](const std::string& name) {
    for (const auto& p : internal_prefixes) {
      if (name == p || p.empty() || name.rfind(p + ".", 0) == 0) return true;
    }
    return false;
  };
  size_t count = 0;
  // The weight of an adapter-ready layer (PEFT wraps e.g. a Linear's "weight" in a ParamWrapper:
  // for a 2-D (out, in) weight that is the same A / B, the same delta and the same keys as module
  // LoRA, which is what it gets here).
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (layer->kind() == nn::LayerKind::kParam || name.empty()) continue;
    const std::string key = name + ".weight";
    if (!matches(key, entries)) continue;
    PEFT_CHECK(!layer->has_adapter(adapter_name), ConfigError, "target_parameters",
               "Trying to wrap an nn.Parameter of layer "
                   << name << " (" << key
                   << "), which is not a valid target: the layer is already "
                      "targeted by target_modules (hint: target it one way)");
    PEFT_CHECK(layer->kind() == nn::LayerKind::kLinear, UnsupportedError, "target_parameters",
               "parameter " << key << " belongs to a " << nn::to_string(layer->kind())
                            << " layer; target_parameters on adapter-ready layers supports Linear "
                               "weights (hint: use "
                               "target_modules for this layer)");
    PEFT_CHECK(config.lora_dropout == 0.0 && !config.lora_bias && !config.use_dora, ConfigError,
               "target_parameters",
               "lora.ParamWrapper does not work with lora_dropout, lora_bias or DoRA (parameter "
                   << key << ")");
    const nn::AdapterSettings s = detail::adapter_settings_for(config, key);
    touched.push_back(layer);
    layer->update_layer(adapter_name, s);
    ++count;
  }
  for (const auto& item : model_->named_modules("", /*include_self=*/true)) {
    const std::string& name = item.key();
    if (is_internal(name)) continue;
    std::vector<std::string> hit;  // own parameters in registration order
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      const std::string key = name.empty() ? p.key() : name + "." + p.key();
      if (matches(key, entries)) hit.push_back(p.key());
    }
    if (hit.empty()) continue;
    PEFT_CHECK(
        !name.empty(), ConfigError, "target_parameters",
        "parameter \""
            << hit.front()
            << "\" is registered on the root module; PEFT cannot wrap parameters of the root "
               "(hint: hold it in a submodule)");
    auto owner = std::dynamic_pointer_cast<nn::ParamModuleImpl>(item.value());
    PEFT_CHECK(
        owner != nullptr, UnsupportedError, "target_parameters",
        "parameter \""
            << name << "." << hit.front() << "\" belongs to module " << name << " ("
            << item.value()->name()
            << "), which is not a peft::nn::ParamModuleImpl, so its forward cannot see a LoRA "
               "(hint: derive the module from peft::nn::ParamModuleImpl and read the parameter "
               "through param(\""
            << hit.front() << "\"); for a peft::nn layer use target_modules)");
    for (size_t i = 0; i < hit.size(); ++i) {
      const std::string full = name + "." + hit[i];
      auto slot = owner->attach_param_lora(hit[i]);
      // PEFT wraps the first targeted parameter innermost: it gets one "base_layer." per later one.
      slot->set_nesting(static_cast<int>(hit.size() - 1 - i));
      const nn::AdapterSettings s = detail::adapter_settings_for(config, full);
      touched.push_back(slot);
      slot->update_layer(adapter_name, s);
      ++count;
    }
  }
  return count;
}

}  // namespace peft
