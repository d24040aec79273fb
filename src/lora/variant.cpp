// The default hooks of a LoRA variant: plain LoRA's delta, merge and unmerge (PEFT LoraVariant's
// base behaviour).
#include "peft/lora/variant.h"

#include <ATen/ATen.h>

#include "peft/lora/layer.h"

namespace peft::nn {

void LoraVariant::init(LoraLayerImpl& /*layer*/, const std::string& /*adapter*/) {}
void LoraVariant::remove(LoraLayerImpl& /*layer*/, const std::string& /*adapter*/) {}
void LoraVariant::check_mergeable(const LoraLayerImpl& /*layer*/,
                                  const std::string& /*adapter*/) const {}
void LoraVariant::append_tensors(const LoraLayerImpl& /*layer*/, const std::string& /*adapter*/,
                                 std::vector<std::pair<std::string, at::Tensor>>& /*out*/) const {}
std::string LoraVariant::mixed_batch_refusal() const { return {}; }
void LoraVariant::on_adapter_change(LoraLayerImpl& /*layer*/) {}
bool LoraVariant::keeps_frozen(const std::string& /*tensor_key*/) const { return false; }

at::Tensor LoraVariant::get_delta_weight(const LoraLayerImpl& layer,
                                         const std::string& adapter) const {
  return layer.lora_delta_weight(adapter);
}

at::Tensor LoraVariant::merge_safe(LoraLayerImpl& layer, const std::string& adapter,
                                   const at::Tensor& weight) {
  return weight + get_delta_weight(layer, adapter).to(weight.scalar_type());
}

void LoraVariant::merge_unsafe(LoraLayerImpl& layer, const std::string& adapter,
                               at::Tensor& weight) {
  weight.copy_(merge_safe(layer, adapter, weight));
}

at::Tensor LoraVariant::unmerge(LoraLayerImpl& layer, const std::string& adapter,
                                const at::Tensor& weight) {
  return weight - get_delta_weight(layer, adapter).to(weight.scalar_type());
}

}  // namespace peft::nn
