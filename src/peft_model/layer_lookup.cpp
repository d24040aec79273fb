// How PeftModel sees a module tree: the adapter-ready layers by name, the modules as the targeting
// rules see them, and lookups by PEFT's suffix rule.
#include <algorithm>
#include <map>

#include "../strings.h"
#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"

namespace peft::detail {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The adapter-ready layers that target_modules can match: every LoRA layer but the parameter slots
// (target_parameters), whose names are those of their owning modules.
NamedLayers module_layers(torch::nn::Module& model) {
  auto layers = nn::lora_layers(model);
  layers.erase(
      std::remove_if(layers.begin(), layers.end(),
                     [](const auto& e) { return e.second->kind() == nn::LayerKind::kParam; }),
      layers.end());
  return layers;
}

std::vector<ModuleInfo> module_infos(torch::nn::Module& model) {
  auto all_layers = module_layers(model);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(),
                                                                          all_layers.end());
  std::vector<ModuleInfo> modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    // Children of adapter-ready layers (lora_A, copies, ...) are never targets (PEFT skips tuner
    // internals).
    bool internal = false;
    for (const auto& [lname, layer] : all_layers) {
      if (name.size() > lname.size() && name.compare(0, lname.size() + 1, lname + ".") == 0)
        internal = true;
    }
    auto it = layer_by_name.find(name);
    ModuleInfo m;
    m.name = name;
    m.under_adapter = internal;
    m.type = internal ? "adapter internals"
                      : (it != layer_by_name.end() ? nn::to_string(it->second->kind()) : "Module");
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

void remove_adapter_everywhere(nn::LoraLayerImpl& layer, const std::string& adapter) {
  layer.delete_adapter(adapter);
  if (auto* copies = layer.modules_to_save()) copies->erase(adapter);
  if (auto* tokens = layer.trainable_tokens()) tokens->remove(adapter);
}

LayerPtr find_layer(torch::nn::Module& model, const std::string& name, std::string* full_name) {
  if (name.empty()) return nullptr;
  for (auto& [n, layer] : nn::lora_layers(model)) {
    if (n == name || ends_with(n, name)) {
      if (full_name) *full_name = n;
      return layer;
    }
  }
  return nullptr;
}

}  // namespace peft::detail
