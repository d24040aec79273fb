// Frozen Linear base weights held in bfloat16 for a bf16-autocast run.
#include "peft/train/frozen_bf16.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <unordered_map>

#include "peft/lora/layer.h"
#include "peft/models/model.h"

namespace peft::train {

namespace {

// Only plain LoRA (or no adapter) reaches the weight solely through base_forward's linear.
bool consumed_by_autocast_alone(const nn::LoraLayerImpl& layer) {
  if (!layer.is_linear() || layer.is_quantized()) return false;
  if (layer.modules_to_save() || layer.trainable_tokens()) return false;
  for (const auto& name : layer.adapter_names()) {
    if (layer.variant(name)) return false;
  }
  const at::Tensor& w = layer.weight();
  return w.defined() && w.scalar_type() == at::kFloat && !w.requires_grad();
}

}  // namespace

FrozenBf16Summary store_frozen_linear_weights_in_bf16(models::PretrainedModel& model) {
  // How many modules register each storage: a tied weight is registered twice.
  // (include_self = false: the model need not be held by a shared_ptr.)
  const auto modules = model.modules(/*include_self=*/false);
  std::unordered_map<const void*, int> owners;
  const auto count = [&owners](const torch::nn::Module& m) {
    for (const auto& p : m.named_parameters(/*recurse=*/false)) {
      if (p.value().defined()) ++owners[p.value().storage().unsafeGetStorageImpl()];
    }
  };
  count(model);
  for (const auto& module : modules) count(*module);
  FrozenBf16Summary summary;
  for (const auto& module : modules) {
    auto* layer = dynamic_cast<nn::LoraLayerImpl*>(module.get());
    if (!layer || !consumed_by_autocast_alone(*layer)) continue;
    at::Tensor& w = layer->weight();
    if (owners[w.storage().unsafeGetStorageImpl()] != 1) continue;
    const int64_t before = static_cast<int64_t>(w.numel() * w.element_size());
    at::NoGradGuard no_grad;
    // set_data keeps the registered parameter (the same TensorImpl) and swaps its values.
    w.set_data(w.to(at::kBFloat16));
    summary.layers += 1;
    summary.bytes_saved += before - static_cast<int64_t>(w.numel() * w.element_size());
  }
  return summary;
}

}  // namespace peft::train
