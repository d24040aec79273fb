// Adapter-ready Linear / GPT-2 Conv1D: base matmul plus scaling * B (A x) per active adapter.
#include "peft/lora/linear.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "init_weights.h"
#include "peft/error.h"
#include "peft/quant/quantized_weight.h"

namespace peft::nn {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias)
    : LinearImpl(LayerKind::kLinear, in_features, out_features, bias, false) {
  at::Tensor w = weight();
  detail::default_weight_init_(w);
  if (has_bias()) detail::default_bias_init_(this->bias(), w);
}

LinearImpl::LinearImpl(LayerKind kind, int64_t in_features, int64_t out_features, bool bias,
                       bool fan_in_fan_out)
    : LoraLayerImpl(kind),
      in_features_(in_features),
      out_features_(out_features),
      fan_in_fan_out_(fan_in_fan_out) {
  PEFT_CHECK(in_features > 0 && out_features > 0, ConfigError, "nn::Linear",
             "features must be positive: in " << in_features << ", out " << out_features);
  at::Tensor w = fan_in_fan_out ? torch::empty({in_features, out_features})
                                : torch::empty({out_features, in_features});
  register_base(w, bias ? torch::zeros({out_features}) : at::Tensor());
}

LinearImpl::LinearImpl(const at::Tensor& shared_weight)
    : LoraLayerImpl(LayerKind::kLinear),
      in_features_(shared_weight.size(1)),
      out_features_(shared_weight.size(0)),
      fan_in_fan_out_(false) {
  PEFT_CHECK(shared_weight.dim() == 2, ShapeMismatchError, "nn::Linear",
             "a tied weight must be 2-D (out, in); got " << shared_weight.dim() << " dimensions");
  register_base(shared_weight, at::Tensor());
}

Conv1DImpl::Conv1DImpl(int64_t nf, int64_t nx)
    : LinearImpl(LayerKind::kConv1D, nx, nf, true, true) {
  torch::NoGradGuard no_grad;
  weight().normal_(0.0, 0.02);
}

void LinearImpl::create_adapter(const std::string& adapter, const AdapterSettings& s) {
  add_factors(adapter, s, {s.r, in_features_}, {out_features_, s.r});
}

void LinearImpl::destroy_adapter(const std::string& adapter) { remove_factors(adapter); }

at::Tensor LinearImpl::base_forward(const at::Tensor& x, const at::Tensor& w,
                                    const at::Tensor& b) const {
  // x: (..., in); W: (out, in), or (in, out) for Conv1D. A quantized weight runs the fused kernel
  // (a trainable modules_to_save copy is float and takes the plain path).
  if (quant_ && w.is_same(weight())) return quant_->linear(x, b);
  if (fan_in_fan_out_) {
    at::Tensor y = at::matmul(x, w);
    return b.defined() ? y.add_(b) : y;
  }
  return at::linear(x, w, b);
}

at::Tensor LinearImpl::lora_forward(const at::Tensor& x, const std::string& adapter) const {
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in)
  const auto& B = lora_B_->get<FactorImpl>(adapter);          // weight (out, r)
  const at::Tensor xin = x.scalar_type() == A.scalar_type() ? x : x.to(A.scalar_type());
  return at::linear(at::matmul(xin, A.t()), B->weight, B->bias) * scaling(adapter);
}

at::Tensor LinearImpl::add_adapter_output(at::Tensor result, const at::Tensor& x,
                                          const std::string& adapter) const {
  const at::Tensor xin = lora_dropout(x, adapter);
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in)
  const auto& B = lora_B_->get<FactorImpl>(adapter);          // weight (out, r)
  if (result.scalar_type() == A.scalar_type()) {
    // result + s B (A x) as one GEMM (addmm, beta = 1, alpha = s): no (..., out) temporaries for
    // B's output and its scaling. Inference writes into the output buffer itself; with autograd it
    // adds into a copy of the base output, and autograd gives result, A x and B their gradients.
    const double s = scaling(adapter);
    at::Tensor h = at::matmul(xin, A.t());  // (..., r)
    h = h.reshape({-1, h.size(-1)});
    if (!at::GradMode::is_enabled() && result.is_contiguous()) {
      result.view({-1, out_features_}).addmm_(h, B->weight.t(), 1.0, s);
      if (B->bias.defined()) result.add_(B->bias, s);
      return result;
    }
    at::Tensor out = at::addmm(result.reshape({-1, out_features_}), h, B->weight.t(), 1.0, s)
                         .view(result.sizes());
    if (B->bias.defined()) out = out + B->bias * s;
    return out;
  }
  return result + lora_forward(xin, adapter).to(result.scalar_type());
}

at::Tensor LinearImpl::lora_delta_weight(const std::string& adapter) const {
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in)
  const auto& B = lora_B_->get<FactorImpl>(adapter)->weight;  // (out, r)
  at::Tensor delta = scaled_product(B, A, adapter);           // (out, in)
  return fan_in_fan_out_ ? delta.t().contiguous() : delta;
}

}  // namespace peft::nn
