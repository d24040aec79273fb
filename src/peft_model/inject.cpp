// PeftModel construction and injection: PEFT's get_peft_model / BaseTuner.inject_adapter (match the
// targets, create each layer's adapter, then the auxiliary modules), rolled back as a whole when
// any step fails.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <map>

#include "../strings.h"
#include "adapter_settings.h"
#include "internal.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"
#include "peft/peft_model.h"
#include "peft/targeting.h"

namespace peft {
namespace {

// Fields whose feature lands in a later issue: parsed and kept, but refused when used.
void check_supported(const LoraConfig& c) {
  std::vector<std::string> used;
  if (c.megatron_config) used.push_back("megatron_config");
  if (c.kasa_config) used.push_back("kasa_config");
  if (used.empty()) return;
  const std::string list = detail::join(used);
  throw UnsupportedError(
      "get_peft_model", "LoraConfig uses " + list +
                            ", which peft.cpp does not implement yet (hint: these land with "
                            "later releases; the field is kept when a config is read and written)");
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> find_target_layers(
    torch::nn::Module& model, const LoraConfig& config) {
  const PeftModelInfo& inf = model_info(model);
  TargetingResult targets = find_targets(config, detail::module_infos(model),
                                         inf.default_target_modules(), inf.output_embedding_name());
  auto all_layers = detail::module_layers(model);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(),
                                                                          all_layers.end());
  std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> out;
  for (const auto& name : targets.targeted) out.emplace_back(name, layer_by_name.at(name));
  return out;
}

PeftModel::PeftModel(std::shared_ptr<torch::nn::Module> model, LoraConfig config,
                     const std::string& adapter_name, bool autocast_adapter_dtype)
    : model_(std::move(model)) {
  PEFT_CHECK(model_ != nullptr, Error, "get_peft_model", "model is null");
  if (!adapter_name.empty() && std::string("lora_").find(adapter_name) != std::string::npos) {
    warn(
        "get_peft_model",
        "Adapter name \"" + adapter_name +
            "\" should not be contained in the prefix \"lora_\". This may lead to reinitialization "
            "of the adapter weights during loading.");
  }
  inject(adapter_name, config);
  configs_.emplace(adapter_name, std::move(config));
  adapter_order_.push_back(adapter_name);
  active_ = {adapter_name};
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->set_active_adapters(active_, true);
  refresh_trainable();
  if (autocast_adapter_dtype) cast_adapter_dtype(adapter_name);
}

std::shared_ptr<PeftModel> get_peft_model(std::shared_ptr<torch::nn::Module> model,
                                          LoraConfig config, const std::string& adapter_name) {
  return std::make_shared<PeftModel>(std::move(model), std::move(config), adapter_name);
}

void PeftModel::inject(const std::string& adapter_name, LoraConfig& config) {
  config.validate();
  check_supported(config);
  // PEFT: "LoraModel supports only 1 adapter with bias."
  if (config.bias != Bias::kNone) {
    for (const auto& [name, c] : configs_) {
      PEFT_CHECK(c.bias == Bias::kNone, ConfigError, "add_adapter",
                 "LoraModel supports only 1 adapter with bias. When using multiple adapters, set "
                 "bias to 'none' "
                 "for all adapters (adapter \""
                     << name << "\" already has bias=" << to_string(c.bias) << ")");
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
    // PEFT _prepare_model: replicate_layers before matching, so that targets use the new layer
    // indices.
    model_info(*model_).replicate_layers(*config.layer_replication);
  }
  auto all_layers = detail::module_layers(*model_);
  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layer_by_name(all_layers.begin(),
                                                                          all_layers.end());
  std::vector<ModuleInfo> modules = detail::module_infos(*model_);
  TargetingResult targets = find_targets(config, modules, info().default_target_modules(),
                                         info().output_embedding_name());
  config.target_modules = targets.resolved_target_modules;

  std::vector<std::shared_ptr<nn::LoraLayerImpl>> copies =
      find_modules_to_save(adapter_name, config, modules);

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
    }
    if (!tied_head.empty()) {
      auto head = layer_by_name.at(tied_head);
      touched.push_back(head);
      head->tie_adapter_to(adapter_name, layer_by_name.at(tied_embedding));
    }
    const size_t params = add_parameter_targets(adapter_name, config, touched);
    if (targets.targeted.empty() && params == 0 && config.target_parameters &&
        !config.target_parameters->empty()) {
      throw NoMatchingModuleError(
          "targeting",
          "Target modules and target parameters " + detail::join(*config.target_parameters) +
              " not found in the base model. Please check the target modules / parameters and try "
              "again (hint: parameters match as <module>.<parameter> by full name or dotted "
              "suffix, "
              "e.g. \"mlp.experts.gate_up_proj\")");
    }
    add_trainable_copies(adapter_name, config, copies, touched);
    add_trainable_tokens(adapter_name, config, touched);
    // Whether a layer took QALoRA is what resolve_lora_variant decided (GPTQ layers only).
    const auto took_qalora = [&](const std::string& n) {
      const auto v = layer_by_name.at(n)->variant(adapter_name);
      return v && std::string(v->name()) == "QALoRA";
    };
    if (config.use_qalora && !targets.targeted.empty() &&
        std::none_of(targets.targeted.begin(), targets.targeted.end(), took_qalora)) {
      // PEFT applies QALoRA in its GPTQ layer only and says nothing elsewhere.
      warn("get_peft_model",
           "use_qalora: none of the targeted layers is GPTQ-quantized, and "
           "QALoRA applies only to GPTQ layers (as in PEFT); adapter \"" +
               adapter_name + "\" is plain LoRA");
    }
  } catch (...) {
    for (auto& layer : touched) detail::remove_adapter_everywhere(*layer, adapter_name);
    throw;
  }
}

void PeftModel::cast_adapter_dtype(const std::string& adapter_name) {
  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : nn::lora_layers(*model_)) {
    if (!layer->has_adapter(adapter_name)) continue;
    for (auto& [key, t] : layer->adapter_tensors(adapter_name)) {
      if (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16)
        t.set_data(t.to(at::kFloat));
    }
  }
}

}  // namespace peft
