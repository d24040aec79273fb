// Reading GPTQ-quantized Hugging Face checkpoints (transformers' GPTQConfig,
// quantization_config.quant_method == "gptq"): every Linear stored as qweight / qzeros / scales /
// g_idx becomes a peft::nn::Linear holding the packed weight (QuantizedWeight, method gptq).
#include <ATen/ATen.h>
#include <torch/types.h>

#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/quant/gptq.h"
#include "peft/quant/quantized_weight.h"
#include "quantize_model.h"

namespace peft::models::detail {
namespace {

constexpr const char* kField = "config.json quantization_config";

template <typename T>
T read_field(const nlohmann::json& qc, const char* name, T fallback, const char* expected) {
  if (!qc.contains(name) || qc[name].is_null()) return fallback;
  const auto& v = qc[name];
  const bool ok = std::is_same_v<T, bool> ? v.is_boolean()
                  : std::is_integral_v<T> ? v.is_number_integer()
                                          : v.is_string();
  PEFT_CHECK(ok, ConfigError, "load_pretrained",
             kField << "." << name << " is " << v.dump() << "; expected " << expected);
  return v.get<T>();
}

quant::GptqOptions gptq_options(const nlohmann::json& qc) {
  quant::GptqOptions o;
  PEFT_CHECK(qc.contains("bits"), ConfigError, "load_pretrained",
             kField << " has quant_method \"gptq\" but no \"bits\"; expected 2, 4 or 8");
  o.bits = read_field<int64_t>(qc, "bits", 4, "an integer (2, 4 or 8)");
  o.group_size = read_field<int64_t>(qc, "group_size", 128, "an integer (-1 or a group size)");
  o.desc_act = read_field<bool>(qc, "desc_act", false, "true or false");
  o.sym = read_field<bool>(qc, "sym", true, "true or false");
  // transformers / optimum write "checkpoint_format"; newer GPTQModel configs "format".
  std::string format = read_field<std::string>(qc, "checkpoint_format", "", "a string");
  if (format.empty()) format = read_field<std::string>(qc, "format", "gptq", "a string");
  PEFT_CHECK(format == "gptq" || format == "gptq_v2", ConfigError, "load_pretrained",
             kField << ".checkpoint_format \"" << format
                    << "\" is not supported; expected \"gptq\" (v1) or \"gptq_v2\" (hint: "
                       "kernel-specific layouts such as marlin or bitblas are repacked for one "
                       "GPU kernel; save the model in the gptq format)");
  o.format = format == "gptq" ? quant::GptqFormat::kV1 : quant::GptqFormat::kV2;
  quant::validate_gptq_options(o, std::string(kField));
  return o;
}

}  // namespace

std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> take_gptq_weights(
    PretrainedModel& model, std::map<std::string, at::Tensor>& tensors,
    at::ScalarType compute_dtype, const std::string& source) {
  std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> out;
  const nlohmann::json qc = quantization_config(model);
  if (qc.is_null()) return out;
  const std::string method = read_field<std::string>(qc, "quant_method", "", "a string");
  PEFT_CHECK(method.empty() || method == "bitsandbytes" || method == "gptq", UnsupportedError,
             "load_pretrained",
             kField << ".quant_method \"" << method
                    << "\" is not supported; expected \"bitsandbytes\" or \"gptq\" (hint: load "
                       "the float model instead, optionally with --quantize)");
  if (method != "gptq") return out;
  const quant::GptqOptions options = gptq_options(qc);
  for (auto& [name, layer] : nn::lora_layers(model)) {
    const std::string prefix = name + ".";
    if (!tensors.count(prefix + "qweight")) continue;
    auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(layer);
    PEFT_CHECK(linear && layer->kind() == nn::LayerKind::kLinear, UnsupportedError,
               "load_pretrained",
               source << ": \"" << prefix << "qweight\" is a GPTQ weight of a "
                      << nn::to_string(layer->kind())
                      << " layer; only Linear layers hold GPTQ weights here (hint: GPT-2's "
                         "Conv1D is not supported quantized)");
    auto q = quant::take_gptq_tensors(
        tensors, prefix, {linear->out_features(), linear->in_features()}, options, source);
    // Loading checks and copies every parameter: a broadcast zero stands in for the weight.
    tensors[prefix + "weight"] = at::zeros({}, at::TensorOptions().dtype(compute_dtype))
                                     .expand({linear->out_features(), linear->in_features()});
    out.emplace_back(name, quant::QuantizedWeight::from_gptq(std::move(*q), compute_dtype));
  }
  PEFT_CHECK(!out.empty(), FormatError, "load_pretrained",
             source << ": " << kField
                    << " says gptq, but no Linear layer's \"qweight\" was found (hint: is this "
                       "the quantized checkpoint, and a model family peft.cpp builds?)");
  for (const auto& [key, t] : tensors) {
    const auto dot = key.rfind('.');
    const std::string leaf = dot == std::string::npos ? key : key.substr(dot + 1);
    PEFT_CHECK(leaf != "qweight", FormatError, "load_pretrained",
               source << ": \"" << key
                      << "\" is a GPTQ weight of no Linear layer of this model (hint: a "
                         "quantized output head or embedding is not supported)");
  }
  return out;
}

}  // namespace peft::models::detail
