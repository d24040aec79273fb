// Quantized bases for the model zoo (private to it): quantize_model after loading, and bitsandbytes
// checkpoints.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "peft/models/model.h"
#include "peft/quant/quantized_weight.h"

namespace peft::models::detail {

// config.json's quantization_config object (read by both checkpoint readers below), or null when
// there is none; ConfigError when it is something else than an object.
nlohmann::json quantization_config(const PretrainedModel& model);
// Takes every bitsandbytes-serialised Linear weight out of `tensors` (packed data and quant state)
// and leaves a zero-cost stand-in under "<layer>.weight" so that loading checks shapes as usual.
// `source` names the file in errors. config.json's quantization_config sets the compute dtype
// (bnb_4bit_compute_dtype) and the int8 outlier threshold (llm_int8_threshold, transformers'
// default 6.0).
std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> take_bnb_weights(
    PretrainedModel& model, std::map<std::string, at::Tensor>& tensors,
    at::ScalarType compute_dtype, const std::string& source);
// Takes every GPTQ-serialised Linear weight (qweight / qzeros / scales / g_idx, when config.json's
// quantization_config.quant_method is "gptq") out of `tensors`, leaving the same stand-ins;
// UnsupportedError for another quant_method than bitsandbytes / gptq. Defined in
// gptq_checkpoint.cpp.
std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>> take_gptq_weights(
    PretrainedModel& model, std::map<std::string, at::Tensor>& tensors,
    at::ScalarType compute_dtype, const std::string& source);
// Installs them after loading.
void install_quantized_weights(
    PretrainedModel& model,
    const std::vector<std::pair<std::string, std::shared_ptr<quant::QuantizedWeight>>>& qs);
// Quantizes every peft::nn::Linear except the output embedding (transformers keeps lm_head in
// float); returns how many layers were quantized.
size_t quantize_model(PretrainedModel& model, const quant::QuantizeOptions& options);

}  // namespace peft::models::detail
