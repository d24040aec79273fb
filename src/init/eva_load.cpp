// Loading an EVA state dict into a PeftModel (PEFT src/peft/tuners/lora/eva.py:
// _load_eva_state_dict and initialize_lora_eva_weights): re-created adapters with the redistributed
// ranks, A from the PCA, and the rewritten target_modules / rank_pattern / alpha_pattern.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../strings.h"
#include "peft/error.h"
#include "peft/init/eva.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"
#include "peft/targeting.h"

namespace peft {
namespace {

constexpr const char* kComponent = "initialize_lora_eva_weights";
// PEFT's MIN_TARGET_MODULES_FOR_OPTIMIZATION: from this many names on, target_modules is condensed.
constexpr size_t kMinTargetModulesForOptimization = 20;

// "a.b.c" -> {"c", "b.c", "a.b.c"}.
std::vector<std::string> suffixes(const std::string& name) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', start)) {
    parts.push_back(name.substr(start, dot - start));
    start = dot + 1;
  }
  parts.push_back(name.substr(start));
  std::vector<std::string> out;
  std::string suffix;
  for (size_t i = parts.size(); i-- > 0;) {
    suffix = suffix.empty() && i + 1 == parts.size() ? parts[i] : parts[i] + "." + suffix;
    out.push_back(suffix);
  }
  return out;
}

// PEFT _find_minimal_target_modules: the fewest name suffixes that select every target and no other
// module. Returned sorted (PEFT returns a set).
std::vector<std::string> find_minimal_target_modules(const std::vector<std::string>& targets,
                                                     const std::vector<std::string>& others) {
  std::set<std::string> other_suffixes;
  for (const auto& o : others) {
    for (auto& s : suffixes(o)) other_suffixes.insert(std::move(s));
  }
  const std::set<std::string> unique(targets.begin(), targets.end());
  std::vector<std::pair<std::string, std::vector<std::string>>> items;
  for (const auto& t : unique) items.emplace_back(t, suffixes(t));
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  std::set<std::string> required;
  for (const auto& [item, sufs] : items) {
    for (const auto& suffix : sufs) {
      if (required.count(suffix) || other_suffixes.count(suffix)) continue;
      const bool covered = std::any_of(required.begin(), required.end(), [&](const std::string& r) {
        return item.size() > r.size() && item.compare(item.size() - r.size(), r.size(), r) == 0 &&
               item[item.size() - r.size() - 1] == '.';
      });
      if (!covered) {
        required.insert(suffix);
        break;
      }
    }
  }
  if (required.empty()) return {unique.begin(), unique.end()};
  return {required.begin(), required.end()};
}

// update_layer with new r / alpha / init, keeping every adapter's trainability (update_layer makes
// the active adapters trainable, which would undo inference_mode).
void recreate(nn::LoraLayerImpl& layer, const std::string& adapter, int64_t r, double alpha,
              const InitLoraWeights& init) {
  std::map<std::string, bool> trainable;
  for (const auto& a : layer.adapter_names()) {
    bool any = false;
    for (const auto& [key, t] : layer.adapter_tensors(a)) any = any || t.requires_grad();
    trainable[a] = any;
  }
  // Divergence from PEFT: PEFT passes only dropout / rslora / dora / lora_bias from the config and
  // defaults the rest (aLoRA tokens, ...); here the layer's other settings are kept.
  nn::AdapterSettings s = layer.adapter_settings(adapter);
  s.r = static_cast<int>(r);
  s.lora_alpha = alpha;
  s.init_lora_weights = init;
  layer.update_layer(adapter, s);
  for (const auto& a : layer.adapter_names()) {
    for (auto& [key, t] : layer.adapter_tensors(a)) t.set_requires_grad(trainable[a]);
  }
}

at::Tensor lora_A(const nn::LoraLayerImpl& layer, const std::string& adapter) {
  for (auto& [key, t] : layer.adapter_tensors(adapter)) {
    if (key == "lora_A.weight") return t;
  }
  throw Error(kComponent, "layer has no lora_A for adapter \"" + adapter + "\"");
}

void check_eva_adapter(const PeftModel& model, const std::string& adapter) {
  const LoraConfig& config = model.peft_config(adapter);
  PEFT_CHECK(
      model.active_adapters().size() <= 1, UnsupportedError, kComponent,
      "`initialize_lora_eva_weights` currently only works with a single active adapter; active: "
          << detail::join(model.active_adapters()) << " (hint: set_adapter(\"" << adapter
          << "\") first)");
  PEFT_CHECK(
      config.init_lora_weights.kind == InitLoraWeights::Kind::kEva, ConfigError, kComponent,
      "`initialize_lora_eva_weights` can only be used with `init_lora_weights='eva'`; adapter \""
          << adapter << "\" has init_lora_weights=" << to_string(config.init_lora_weights)
          << " (hint: create the adapter with init_lora_weights = \"eva\")");
}

}  // namespace

void initialize_lora_eva_weights(PeftModel& model, const std::vector<train::Batch>& batches,
                                 const EvaForwardFn& forward, const std::string& adapter,
                                 const EvaOptions& options) {
  check_eva_adapter(model, adapter);  // before the expensive part, as PEFT does
  initialize_lora_eva_weights(model, get_eva_state_dict(model, batches, forward, adapter, options),
                              adapter);
}

void initialize_lora_eva_weights(PeftModel& model, std::map<std::string, at::Tensor> eva_state_dict,
                                 const std::string& adapter) {
  check_eva_adapter(model, adapter);
  LoraConfig config = model.peft_config(adapter);
  const EvaConfig ec = config.eva_config.value_or(EvaConfig{});

  std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> layers;
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> by_name;
  for (auto& entry : nn::lora_layers(model.base_model())) {
    if (!entry.second->has_adapter(adapter)) continue;
    by_name[entry.first] = entry.second;
    layers.push_back(std::move(entry));
  }

  // Everything is checked before the first change.
  std::vector<std::string> merged;
  for (const auto& [name, layer] : layers) {
    const auto& m = layer->merged_adapters();
    if (std::find(m.begin(), m.end(), adapter) != m.end()) merged.push_back(name);
  }
  PEFT_CHECK(merged.empty(), Error, kComponent,
             "adapter \"" << adapter << "\" is merged in " << detail::join(merged)
                          << "; expected it unmerged (hint: call unmerge_adapter() first)");
  std::vector<std::string> problems, unknown;
  for (const auto& [name, w] : eva_state_dict) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      unknown.push_back(name);
      continue;
    }
    const nn::LoraLayerImpl& layer = *it->second;
    if (!layer.is_linear()) {
      problems.push_back("\"" + name + "\" is a " + nn::to_string(layer.kind()) +
                         " layer (EVA initialises Linear / Conv1D layers only)");
    } else if (!w.defined() || w.dim() != 2 || w.size(1) != layer.in_features() ||
               !at::isFloatingType(w.scalar_type())) {
      problems.push_back(
          "\"" + name + "\": " +
          (w.defined() ? detail::shape_string(w.sizes()) + " " + c10::toString(w.scalar_type())
                       : std::string("undefined tensor")) +
          ", expected a floating (new_r, " + std::to_string(layer.in_features()) + ") matrix");
    }
  }
  PEFT_CHECK(problems.empty(), ShapeMismatchError, kComponent,
             "the EVA state dict does not fit adapter \""
                 << adapter << "\": " << detail::join(problems, "; ")
                 << " (hint: compute it with get_eva_state_dict on this model and adapter)");
  if (!unknown.empty()) {
    // PEFT ignores them silently.
    warn(kComponent, "EVA state dict entries that name no layer carrying adapter \"" + adapter +
                         "\" were ignored: " + detail::join(unknown));
  }

  torch::NoGradGuard no_grad;
  std::vector<std::string> targets, missing;
  std::vector<std::pair<std::string, int>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  for (const auto& [name, layer] : layers) {
    const ResolvedRank rr = resolve_rank(config, name);
    double alpha = rr.lora_alpha;
    int64_t new_rank = rr.r;
    auto it = eva_state_dict.find(name);
    if (it != eva_state_dict.end()) {
      const at::Tensor& w = it->second;
      new_rank = w.size(0);
      if (new_rank == 0) {
        // Divergence from PEFT: PEFT swaps the whole LoRA layer for its base layer (dropping other
        // adapters on it too); here only this adapter is removed.
        layer->delete_adapter(adapter);
        continue;
      }
      if (new_rank != rr.r && ec.adjust_scaling_factors)
        alpha *= static_cast<double>(new_rank) / rr.r;
      if (new_rank != rr.r) recreate(*layer, adapter, new_rank, alpha, config.init_lora_weights);
      lora_A(*layer, adapter).copy_(w);
      targets.push_back(name);
    } else {
      recreate(*layer, adapter, rr.r, alpha, InitLoraWeights{});
      missing.push_back(name);
    }
    if (new_rank != config.r) rank_pattern.emplace_back(name, static_cast<int>(new_rank));
    if (alpha != config.lora_alpha) alpha_pattern.emplace_back(name, alpha);
  }

  targets.insert(targets.end(), missing.begin(), missing.end());
  if (targets.size() >= kMinTargetModulesForOptimization) {
    // Divergence from PEFT: PEFT's list of other modules leaves out the layers that lost their
    // adapter, so the condensed suffixes can select them again when the adapter is loaded; here
    // every module that does not keep the adapter counts as "other".
    const std::set<std::string> kept(targets.begin(), targets.end());
    std::vector<std::string> others;
    for (const auto& item : model.base_model().named_modules("", /*include_self=*/false)) {
      if (!kept.count(item.key())) others.push_back(item.key());
    }
    targets = find_minimal_target_modules(targets, others);
  }
  config.target_modules = targets;
  config.rank_pattern = std::move(rank_pattern);
  config.alpha_pattern = std::move(alpha_pattern);
  model.update_peft_config(adapter, std::move(config));

  if (!missing.empty()) {
    warn(kComponent,
         "the following layers were initialized with init_lora_weights=True because they were not "
         "found in the eva state_dict: " +
             detail::join(missing) +
             "; currently the following lora modules are not supported by EVA: Embedding, "
             "MultiheadAttention, Conv1d/2d/3d");
  }
}

}  // namespace peft
