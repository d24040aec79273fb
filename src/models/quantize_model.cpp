// QLoRA-style quantized bases for the model zoo: quantizing every Linear after loading
// (transformers' BitsAndBytesConfig load_in_4bit / load_in_8bit), and reading checkpoints saved by
// bitsandbytes.
#include "quantize_model.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <nlohmann/json.hpp>
#include <optional>

#include "peft/dtype.h"
#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/quant/quantized_weight.h"

namespace peft::models::detail {
namespace {

// transformers' get_keys_to_not_convert: the output embedding (and a head tied to the input
// embedding) stays in float; so do GPT-2's Conv1D layers (bitsandbytes replaces only nn.Linear).
std::vector<std::pair<std::string, std::shared_ptr<nn::LinearImpl>>> quantizable(
    PretrainedModel& model) {
  std::vector<std::pair<std::string, std::shared_ptr<nn::LinearImpl>>> out;
  const std::string head = model.output_embedding_name();
  for (auto& [name, layer] : nn::lora_layers(model)) {
    if (layer->kind() != nn::LayerKind::kLinear || name == head) continue;
    if (auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer))
      out.emplace_back(name, linear);
  }
  return out;
}

}  // namespace

nlohmann::json quantization_config(const PretrainedModel& model) {
  if (model.config_json().empty()) return nullptr;
  auto config = nlohmann::json::parse(model.config_json(), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("quantization_config")) return nullptr;
  const auto& qc = config["quantization_config"];
  PEFT_CHECK(qc.is_object() || qc.is_null(), ConfigError, "load_pretrained",
             "config.json quantization_config is " << qc.dump() << "; expected an object");
  return qc;
}

std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> take_bnb_weights(
    PretrainedModel& model, std::map<std::string, at::Tensor>& tensors,
    at::ScalarType compute_dtype, const std::string& source) {
  // config.json's quantization_config (transformers' BitsAndBytesConfig): the compute dtype of
  // 4-bit layers and the LLM.int8 outlier threshold (default 6.0) of 8-bit ones.
  double threshold = 6.0;
  std::optional<at::ScalarType> bnb_compute;
  const nlohmann::json qc = quantization_config(model);
  if (qc.is_object()) {
    if (qc.contains("llm_int8_threshold") && qc["llm_int8_threshold"].is_number()) {
      threshold = qc["llm_int8_threshold"].get<double>();
    }
    if (qc.contains("bnb_4bit_compute_dtype") && qc["bnb_4bit_compute_dtype"].is_string()) {
      bnb_compute = parse_dtype(qc["bnb_4bit_compute_dtype"].get<std::string>(),
                                "config.json quantization_config.bnb_4bit_compute_dtype");
    }
  }
  std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> out;
  for (auto& [name, layer] : quantizable(model)) {
    const std::string prefix = name + ".";
    auto q = quant::take_bnb_weight(tensors, prefix, {layer->out_features(), layer->in_features()},
                                    bnb_compute.value_or(compute_dtype), source);
    if (!q) continue;
    if ((*q)->method() == quant::QuantMethod::kInt8 && threshold != 0.0) {
      *q = quant::QuantizedWeight::from_int8((*q)->q8(), (*q)->compute_dtype(), threshold);
    }
    // load_state_into checks and copies every parameter: a broadcast zero stands in for the packed
    // weight (no memory), which set_quantized_weight replaces after loading.
    tensors[prefix + "weight"] = at::zeros({}, at::TensorOptions().dtype(compute_dtype))
                                     .expand({layer->out_features(), layer->in_features()});
    out.emplace_back(name, *q);
  }
  return out;
}

void install_quantized_weights(
    PretrainedModel& model,
    const std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>>& qs) {
  if (qs.empty()) return;
  // Every Linear (a GPTQ checkpoint may quantize layers bitsandbytes leaves in float).
  std::map<std::string, std::shared_ptr<nn::LinearImpl>> by_name;
  for (auto& [name, layer] : nn::lora_layers(model)) {
    if (auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer)) by_name[name] = linear;
  }
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
