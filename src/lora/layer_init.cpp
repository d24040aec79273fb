// The weight-based and data-driven init dispatch of a Linear / Conv1D adapter (PEFT
// LoraLayer.update_layer: pissa*, corda, olora, eva, orthogonal, lora_ga, loftq), reading what
// preprocessing attached (LayerInitData).
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "init_weights.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/loftq.h"

namespace peft::nn {

void LoraLayerImpl::init_from_weight(const AdapterSettings& s, at::Tensor& A, at::Tensor& B) {
  using K = InitLoraWeights::Kind;
  const auto kind = s.init_lora_weights.kind;
  if (kind == K::kTrue || kind == K::kFalse || kind == K::kGaussian) return;
  const std::string spelling = to_string(s.init_lora_weights);
  if (!is_linear()) {
    // PEFT's Conv update_layer only knows true / "gaussian" (reset_lora_parameters raises for other
    // strings).
    PEFT_CHECK(kind_ == LayerKind::kEmbedding, ConfigError, "lora",
               "Unknown initialization init_lora_weights='"
                   << spelling << "' for a " << to_string(kind_)
                   << " layer (hint: use true, false or \"gaussian\")");
    return;
  }
  torch::NoGradGuard no_grad;
  if (kind == K::kEva) {
    // PEFT: EVA only zeroes B here; initialize_lora_eva_weights sets A from the data afterwards.
    B.zero_();
    return;
  }
  const auto dtype = weight_.scalar_type();
  PEFT_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, UnsupportedError,
             "lora",
             "Please initialize "
                 << spelling << " under float32, float16, or bfloat16; the base weight is "
                 << c10::toString(dtype)
                 << ". Subsequently, re-quantize the residual model to help minimize quantization "
                    "errors.");
  const bool fifo = kind_ == LayerKind::kConv1D;
  const double scaling = s.base_scaling();
  at::Tensor W = weight_.detach().to(at::kFloat);
  if (fifo) W = W.t();  // (out, in)
  detail::WeightInit wi;
  switch (kind) {
    case K::kPissa:
      wi = detail::pissa_init(W, s.r, scaling, s.init_lora_weights.niter);
      break;
    case K::kOlora:
      // PEFT's olora_init works on the weight as stored, which gives transposed factors for Conv1D
      // (broken there).
      PEFT_CHECK(!fifo, UnsupportedError, "lora",
                 "OLoRA on a fan_in_fan_out (GPT-2 Conv1D) layer: PEFT's olora_init factors the "
                 "stored (in, out) "
                 "weight and produces factors of the wrong shape (hint: use \"pissa\" for GPT-2)");
      wi = detail::olora_init(W, s.r, scaling);
      break;
    case K::kOrthogonal:
      wi = detail::orthogonal_init(in_features(), out_features(), s.r);
      break;
    case K::kCorda: {
      PEFT_CHECK(init_data_.corda.has_value(), ConfigError, "lora",
                 "init_lora_weights=\"corda\": this layer has no CorDA decomposition (hint: run "
                 "peft::preprocess_corda(model, config, run_model) before get_peft_model)");
      const auto& c = *init_data_.corda;
      wi = detail::corda_init(W, s.r, scaling, c.U.to(at::kFloat), c.S.to(at::kFloat),
                              c.V.to(at::kFloat));
      break;
    }
    case K::kLoraGa: {
      at::Tensor G = init_data_.loraga_grad;
      if (!G.defined()) {
        // PEFT falls back to the default init when no gradient was stored (e.g. while loading an
        // adapter).
        detail::default_weight_init_(A);
        B.zero_();
        return;
      }
      G = G.to(at::kFloat);
      if (fifo) G = G.t();
      wi = detail::loraga_init(W, G, s.r, scaling, s.lora_ga_config.value_or(LoraGAConfig{}));
      break;
    }
    case K::kLoftq: {
      // PEFT loftq_init: the base weight becomes the dequantized LoftQ quantization Q, A = R, B = L
      // (not divided by the scaling).
      const LoftQConfig lc = s.loftq_config.value_or(LoftQConfig{});
      auto r = init::loftq_init(W, lc.loftq_bits, s.r, lc.loftq_iter);
      wi.A = r.lora_A;
      wi.B = r.lora_B;
      wi.residual = r.dequantized.to(at::kFloat);
      break;
    }
    case K::kMica:
      // PEFT mica_init: the SVD of W as (out, in); the error shows that shape.
      wi = detail::mica_init(W, s.r, /*embedding=*/false, {W.size(0), W.size(1)});
      break;
    default:
      throw UnsupportedError("lora", "init_lora_weights=\"" + spelling +
                                         "\" is not available for a " + to_string(kind_) +
                                         " layer");
  }
  PEFT_CHECK(wi.A.sizes() == A.sizes() && wi.B.sizes() == B.sizes(), ShapeMismatchError, "lora",
             spelling << " init produced A " << wi.A.sizes() << " and B " << wi.B.sizes()
                      << "; the adapter needs " << A.sizes() << " and " << B.sizes()
                      << " (hint: r must not exceed min(in, out))");
  A.copy_(wi.A);
  B.copy_(wi.B);
  if (wi.residual.defined()) {
    at::Tensor res = fifo ? wi.residual.t() : wi.residual;
    weight_.copy_(res.to(dtype));
  }
}

}  // namespace peft::nn
