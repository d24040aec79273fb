// Quantized base weights of the adapter-ready Linear (QLoRA): bitsandbytes' Linear4bit /
// Linear8bitLt in place. The packed data takes the registered "weight" parameter (as Params4bit /
// Int8Params do), so named_parameters shows what bitsandbytes' state dict holds and no float copy
// stays resident.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/quant/quantized_weight.h"

namespace peft::nn {

void LinearImpl::quantize(const quant::QuantizeOptions& options) {
  PEFT_CHECK(!fan_in_fan_out_, UnsupportedError, "quantize",
             "GPT-2 Conv1D layers are not quantized (bitsandbytes replaces only nn.Linear; hint: "
             "quantize a "
             "Llama-family model, or leave GPT-2 in float)");
  PEFT_CHECK(!merged(), Error, "quantize",
             "the layer has merged adapters (hint: unmerge before quantizing)");
  if (quant_) dequantize();
  torch::NoGradGuard no_grad;
  auto q = quant::QuantizedWeight::quantize(weight().detach(), options);
  quant_options_ = std::make_shared<quant::QuantizeOptions>(options);
  set_quantized_weight(std::move(q));
}

void LinearImpl::set_quantized_weight(std::shared_ptr<quant::QuantizedWeight> q) {
  PEFT_CHECK(q != nullptr, Error, "quantize", "no quantized weight given");
  PEFT_CHECK(!fan_in_fan_out_, UnsupportedError, "quantize",
             "GPT-2 Conv1D layers cannot hold a quantized weight");
  PEFT_CHECK(q->out_features() == out_features_ && q->in_features() == in_features_,
             ShapeMismatchError, "quantize",
             "the quantized weight is (" << q->out_features() << ", " << q->in_features()
                                         << "); the layer is (" << out_features_ << ", "
                                         << in_features_ << ")");
  if (!quant_options_) {
    auto o = std::make_shared<quant::QuantizeOptions>();
    o->method = q->method();
    if (q->method() == quant::QuantMethod::kNF4 || q->method() == quant::QuantMethod::kFP4) {
      o->blocksize = q->q4().blocksize;
      o->double_quant = q->q4().nested;
    } else if (q->method() == quant::QuantMethod::kInt8) {
      o->int8_threshold = q->int8_threshold();
    }
    o->compute_dtype = q->compute_dtype();
    quant_options_ = std::move(o);
  }
  torch::NoGradGuard no_grad;
  weight().set_requires_grad(false);
  weight().set_data(q->packed_data());
  quant_ = std::move(q);
}

void LinearImpl::dequantize() {
  if (!quant_) return;
  torch::NoGradGuard no_grad;
  at::Tensor w = quant_->dequantize();
  quant_.reset();
  quant_options_.reset();
  weight().set_data(w);
}

at::Tensor LinearImpl::float_weight() const {
  if (!quant_) return LoraLayerImpl::float_weight();
  return quant_->dequantize();
}

void LinearImpl::check_base_mergeable() const {
  // PEFT's _check_merge_allowed: "Cannot merge LORA layers when the model is gptq quantized".
  PEFT_CHECK(!quant_ || quant_->method() != quant::QuantMethod::kGPTQ, UnsupportedError, "merge",
             "Cannot merge LORA layers when the model is gptq quantized (a GPTQ weight cannot be "
             "quantized again here; hint: keep the adapter unmerged, or merge it into the float "
             "model the GPTQ checkpoint was made from)");
}

void LinearImpl::commit_float_weight(const at::Tensor& w) {
  if (!quant_) return;
  check_base_mergeable();
  // bitsandbytes' merge: dequantize, add, quantize again with the layer's settings (rounding
  // changes the result).
  quant::QuantizeOptions o = *quant_options_;
  o.compute_dtype = quant_->compute_dtype();
  auto q = quant::QuantizedWeight::quantize(w.to(quant_->compute_dtype()), o);
  auto keep = quant_options_;
  set_quantized_weight(std::move(q));
  quant_options_ = keep;
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  if (!quant_) return LoraLayerImpl::to(device, dtype, non_blocking);
  // Children (adapters) and the float bias move as usual; the packed weight moves device only and
  // keeps computing in its compute dtype (bnb_4bit_compute_dtype).
  for (auto& child : children()) child->to(device, dtype, non_blocking);
  if (has_bias()) bias().set_data(bias().to(device, dtype, non_blocking));
  quant_->to(device);
  weight().set_data(quant_->packed_data());
}

void LinearImpl::to(torch::Dtype dtype, bool non_blocking) {
  if (!quant_) return LoraLayerImpl::to(dtype, non_blocking);
  to(quant_->device(), dtype, non_blocking);
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  if (!quant_) return LoraLayerImpl::to(device, non_blocking);
  for (auto& child : children()) child->to(device, non_blocking);
  if (has_bias()) bias().set_data(bias().to(device, non_blocking));
  quant_->to(device);
  weight().set_data(quant_->packed_data());
}

}  // namespace peft::nn
