// Adapter-ready Linear / GPT-2 Conv1D: base matmul plus scaling * B (A x) per active adapter.
#include "peft/lora/linear.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "init_weights.h"
#include "peft/lora/forward_context.h"
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
    : LoraLayerImpl(kind), in_features_(in_features), out_features_(out_features),
      fan_in_fan_out_(fan_in_fan_out) {
  PEFT_CHECK(in_features > 0 && out_features > 0, ConfigError, "nn::Linear",
             "features must be positive: in " << in_features << ", out " << out_features);
  at::Tensor w = fan_in_fan_out ? torch::empty({in_features, out_features}) : torch::empty({out_features, in_features});
  register_base(w, bias ? torch::zeros({out_features}) : at::Tensor());
}

LinearImpl::LinearImpl(const at::Tensor& shared_weight)
    : LoraLayerImpl(LayerKind::kLinear), in_features_(shared_weight.size(1)), out_features_(shared_weight.size(0)),
      fan_in_fan_out_(false) {
  PEFT_CHECK(shared_weight.dim() == 2, ShapeMismatchError, "nn::Linear",
             "a tied weight must be 2-D (out, in); got " << shared_weight.dim() << " dimensions");
  register_base(shared_weight, at::Tensor());
}

Conv1DImpl::Conv1DImpl(int64_t nf, int64_t nx) : LinearImpl(LayerKind::kConv1D, nx, nf, true, true) {
  torch::NoGradGuard no_grad;
  weight().normal_(0.0, 0.02);
}

void LinearImpl::create_adapter(const std::string& adapter, const AdapterSettings& s) {
  add_factors(adapter, s, {s.r, in_features_}, {out_features_, s.r});
}

void LinearImpl::destroy_adapter(const std::string& adapter) { remove_factors(adapter); }

at::Tensor LinearImpl::base_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  // x: (..., in); W: (out, in), or (in, out) for Conv1D. A quantized weight runs the fused kernel (a trainable
  // modules_to_save copy is float and takes the plain path).
  if (quant_ && w.is_same(weight())) return quant_->linear(x, b);
  if (fan_in_fan_out_) {
    at::Tensor y = at::matmul(x, w);
    return b.defined() ? y.add_(b) : y;
  }
  return at::linear(x, w, b);
}

at::Tensor LinearImpl::add_adapter_output(at::Tensor result, const at::Tensor& x,
                                          const std::string& adapter) const {
  if (auto source = tied_source(adapter)) return add_tied_output(std::move(result), x, *source, adapter);
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in)
  const auto& Bm = lora_B_->get<FactorImpl>(adapter);         // weight (out, r)
  const double s = scaling(adapter);
  at::Tensor xin = x.scalar_type() == A.scalar_type() ? x : x.to(A.scalar_type());
  const double p = dropout_p(adapter);
  const at::Tensor magnitude = dora_magnitude(adapter);
  if (magnitude.defined()) return add_dora_output(std::move(result), xin, adapter);
  if (p > 0.0) xin = at::dropout(xin, p, is_training());
  at::Tensor h = at::matmul(xin, A.t());  // (..., r)
  const auto& alora = adapter_settings(adapter).alora_invocation_tokens;
  if (alora) {
    // aLoRA: only the invocation sequence's last occurrence and the positions after it are adapted.
    at::Tensor y = at::linear(h, Bm->weight, Bm->bias) * s;
    return result + (y * alora_position_mask(y, *alora)).to(result.scalar_type());
  }
  if (!at::GradMode::is_enabled() && result.scalar_type() == h.scalar_type() && result.is_contiguous()) {
    // Inference: fuse scale-and-add into one GEMM on the output buffer (no (..., out) temporary).
    at::Tensor out2d = result.view({-1, out_features_});
    out2d.addmm_(h.reshape({-1, h.size(-1)}), Bm->weight.t(), 1.0, s);
    if (Bm->bias.defined()) result.add_(Bm->bias, s);
    return result;
  }
  at::Tensor y = at::linear(h, Bm->weight, Bm->bias) * s;
  return result + y.to(result.scalar_type());
}

at::Tensor LinearImpl::add_dora_output(at::Tensor result, const at::Tensor& xin, const std::string& adapter) const {
  // PEFT DoraLinearVariant.forward + DoraLinearLayer.forward: with g = m / ||W + s B A|| (the norm detached,
  // paper section 4.3), result += (g - 1) * base + g * s * B A x, where base is the bias-free base output
  // (reused from result without dropout or in eval mode, recomputed on the dropped-out input otherwise).
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;
  const auto& B = lora_B_->get<FactorImpl>(adapter)->weight;
  const double s = scaling(adapter);
  const double p = dropout_p(adapter);
  const at::Tensor W = float_weight();
  at::Tensor norm = dora_weight_norm(W, get_delta_weight(adapter).to(W.scalar_type()));
  at::Tensor g = dora_magnitude(adapter) / norm.to(dora_magnitude(adapter).scalar_type());  // (out,)
  at::Tensor x = xin;
  at::Tensor base;
  if (p == 0.0 || !is_training()) {
    base = has_bias() ? result - bias() : result;
  } else {
    x = at::dropout(xin, p, true);
    base = base_forward(x, W.to(x.scalar_type()), at::Tensor());
  }
  at::Tensor lora = at::linear(at::linear(x, A), B);
  return result + (g - 1) * base + g * lora * s;
}

at::Tensor LinearImpl::add_tied_output(at::Tensor result, const at::Tensor& x, const LoraLayerImpl& source,
                                       const std::string& adapter) const {
  // Tied to the input embedding (vocab, dim): its delta is s (B_e A_e)^T, so the head adds s * (x B_e) A_e.
  at::Tensor A_e, B_e;  // (r, vocab), (dim, r)
  for (auto& [key, t] : source.adapter_tensors(adapter)) {
    if (key == "lora_embedding_A") A_e = t;
    if (key == "lora_embedding_B") B_e = t;
  }
  at::Tensor xin = x.scalar_type() == A_e.scalar_type() ? x : x.to(A_e.scalar_type());
  at::Tensor y = at::matmul(at::matmul(xin, B_e), A_e) * scaling(adapter);
  return result + y.to(result.scalar_type());
}

at::Tensor LinearImpl::get_delta_weight(const std::string& adapter) const {
  if (auto source = tied_source(adapter)) return source->get_delta_weight(adapter);
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in)
  const auto& B = lora_B_->get<FactorImpl>(adapter)->weight;  // (out, r)
  at::Tensor delta = scaled_product(B, A, adapter);          // (out, in)
  return fan_in_fan_out_ ? delta.t().contiguous() : delta;
}

}  // namespace peft::nn
