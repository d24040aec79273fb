// LLM.int8 row-wise absmax quantization as bitsandbytes' int8_vectorwise_quant (threshold 0) and
// int8_vectorwise_dequant (backends/default/ops.py, functional.py).
#include <ATen/ATen.h>

#include <sstream>

#include "peft/error.h"
#include "peft/quant/quantize.h"

namespace peft::quant {

QuantizedInt8 int8_vectorwise_quant(const at::Tensor& W) {
  const auto st = W.scalar_type();
  PEFT_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, ConfigError,
             "int8_vectorwise_quant",
             "weight dtype " << st << " is not supported; expected float32, float16 or bfloat16");
  PEFT_CHECK(
      W.dim() >= 1 && W.numel() > 0, ShapeMismatchError, "int8_vectorwise_quant",
      "weight shape " << W.sizes() << "; expected a non-empty tensor with at least one dimension");
  const int64_t cols = W.size(-1);
  const at::Tensor x = W.detach().to(at::kFloat).reshape({-1, cols});
  const at::Tensor scb = x.abs().amax({1});
  // bitsandbytes: round(A * (127.0 / row_stats)); Python's `127.0 / t` is t.reciprocal() * 127.
  at::Tensor cb = at::round(x * (scb.reciprocal() * 127.0).unsqueeze(1));
  // Divergence from bitsandbytes' default backend: an all-zero row gives 0 * inf = NaN there, whose
  // int8 cast is undefined; we store 0 (what the row dequantizes to either way).
  cb = cb.masked_fill((scb == 0).unsqueeze(1), 0.0);
  QuantizedInt8 q;
  q.CB = cb.to(at::kChar).view(W.sizes());
  q.SCB = scb;
  return q;
}

at::Tensor int8_vectorwise_dequant(const QuantizedInt8& q) {
  PEFT_CHECK(q.CB.scalar_type() == at::kChar, ConfigError, "int8_vectorwise_dequant",
             "CB dtype " << q.CB.scalar_type() << "; expected int8");
  PEFT_CHECK(q.CB.dim() >= 1 && q.CB.numel() > 0, ShapeMismatchError, "int8_vectorwise_dequant",
             "CB shape " << q.CB.sizes() << "; expected a non-empty tensor");
  const int64_t cols = q.CB.size(-1);
  const int64_t rows = q.CB.numel() / cols;
  PEFT_CHECK(q.SCB.numel() == rows, ShapeMismatchError, "int8_vectorwise_dequant",
             "SCB has " << q.SCB.numel() << " values; expected " << rows << " (one per row of CB "
                        << q.CB.sizes() << ")");
  // A * stats.view(-1, 1) * 7.874015718698502e-3, in float32.
  const at::Tensor out =
      q.CB.reshape({rows, cols}).to(at::kFloat) * q.SCB.to(at::kFloat).reshape({rows, 1});
  return (out * 7.874015718698502e-3).view(q.CB.sizes());
}

}  // namespace peft::quant
