// QLoRA-style quantized bases for the model zoo: quantizing every Linear after loading (transformers'
// BitsAndBytesConfig load_in_4bit / load_in_8bit), and reading checkpoints saved by bitsandbytes.
#include "quantize_model.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/quant/quantized_weight.h"

namespace peft::models::detail {
namespace {

// transformers' get_keys_to_not_convert: the output embedding (and a head tied to the input embedding) stays in
// float; so do GPT-2's Conv1D layers (bitsandbytes replaces only nn.Linear).
std::vector<std::pair<std::string, std::shared_ptr<nn::LinearImpl>>> quantizable(PretrainedModel& model) {
  std::vector<std::pair<std::string, std::shared_ptr<nn::LinearImpl>>> out;
  const std::string head = model.output_embedding_name();
  for (auto& [name, layer] : nn::lora_layers(model)) {
    if (layer->kind() != nn::LayerKind::kLinear || name == head) continue;
    if (auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer)) out.emplace_back(name, linear);
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> take_bnb_weights(
    PretrainedModel& model, std::map<std::string, at::Tensor>& tensors, at::ScalarType compute_dtype,
    const std::string& source) {
  std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> out;
  for (auto& [name, layer] : quantizable(model)) {
    const std::string prefix = name + ".";
    auto q = quant::take_bnb_weight(tensors, prefix, {layer->out_features(), layer->in_features()}, compute_dtype,
                                    source);
    if (!q) continue;
    // load_state_into checks and copies every parameter: a broadcast zero stands in for the packed weight (no
    // memory), which set_quantized_weight replaces after loading.
    tensors[prefix + "weight"] =
        at::zeros({}, at::TensorOptions().dtype(compute_dtype)).expand({layer->out_features(), layer->in_features()});
    out.emplace_back(name, *q);
  }
  return out;
}

void install_quantized_weights(PretrainedModel& model,
                               const std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>>& qs) {
  if (qs.empty()) return;
  std::map<std::string, std::shared_ptr<nn::LinearImpl>> by_name;
  for (auto& [name, layer] : quantizable(model)) by_name[name] = layer;
  for (const auto& [name, q] : qs) {
    auto layer = by_name.at(name);
    q->to(layer->bias().defined() ? layer->bias().device() : layer->weight().device());
    layer->set_quantized_weight(q);
  }
}

size_t quantize_model(PretrainedModel& model, const quant::QuantizeOptions& options) {
  size_t n = 0;
  for (auto& [name, layer] : quantizable(model)) {
    if (layer->is_quantized()) continue;
    layer->quantize(options);
    ++n;
  }
  return n;
}

}  // namespace peft::models::detail
