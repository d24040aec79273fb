// PeftModel merging: merge_adapter / unmerge_adapter, merge_and_unload and unload. PEFT
// counterparts: LoraModel.merge_adapter, unmerge_adapter, merge_and_unload, unload
// (BaseTuner._unload_and_optionally_merge).
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/param.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

// Every base that would take merged values must be able to (a GPTQ base cannot: PEFT's
// _check_merge_allowed refuses GPTQ models), checked before anything changes.
void check_bases_mergeable(torch::nn::Module& model) {
  for (const auto& [name, layer] : nn::lora_layers(model)) layer->check_base_mergeable();
}

}  // namespace

void PeftModel::check_merge_allowed() const {
  for (const auto& [name, c] : configs_) {
    // Divergence from PEFT: PEFT's guard looks the key up in the wrong dict and never fires, so
    // merging a replicated model adds every copy's update to the one shared weight
    // (huggingface/peft#1707). Refuse instead.
    PEFT_CHECK(
        !c.layer_replication || c.layer_replication->empty(), UnsupportedError, "merge",
        "adapter \""
            << name
            << "\" uses layer_replication: the replicated layers share their base weights, so "
               "merging would add every copy's update to the same weight (hint: keep the adapters "
               "unmerged, or merge into a model whose layers were materialised with separate "
               "weights)");
  }
}

void PeftModel::merge_adapter(std::optional<std::vector<std::string>> adapter_names,
                              bool safe_merge) {
  check_not_unloaded("merge_adapter");
  check_merge_allowed();
  check_bases_mergeable(*model_);
  if (adapter_names) {
    for (const auto& a : *adapter_names) peft_config(a);
  }
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->merge(adapter_names, safe_merge);
}

void PeftModel::unmerge_adapter() {
  check_not_unloaded("unmerge_adapter");
  for (auto& [name, layer] : nn::lora_layers(*model_)) layer->unmerge();
}

std::shared_ptr<torch::nn::Module> PeftModel::merge_and_unload(
    bool safe_merge, std::optional<std::vector<std::string>> adapter_names,
    QuantizedMerge quantized) {
  check_not_unloaded("merge_and_unload");
  check_merge_allowed();
  // kDequantize turns quantized bases into float ones first, which can take any merge.
  if (quantized == QuantizedMerge::kRequantize) check_bases_mergeable(*model_);
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
    // A modules_to_save copy of the active adapter replaces the original module (PEFT's unload).
    auto* copies = layer->modules_to_save();
    if (!active_.empty() && copies && copies->contains(active_.front())) {
      const auto copy = copies->copy(active_.front());
      layer->set_base_weights(copy->weight.detach(),
                              copy->bias.defined() ? copy->bias.detach() : at::Tensor());
    }
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

}  // namespace peft
