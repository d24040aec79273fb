// LoftQ initialisation: PEFT's loftq_init / _loftq_init_new / _low_rank_decomposition
// (src/peft/utils/loftq_utils.py) on top of the bitsandbytes-compatible quantizers of
// peft/quant/quantize.h.
#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>
#include <tuple>

#include "peft/error.h"
#include "peft/lora/loftq.h"
#include "peft/quant/quantize.h"

namespace peft::init {
namespace {

constexpr const char* kComponent = "loftq";

void check_matrix(const at::Tensor& t, const char* what) {
  PEFT_CHECK(t.defined() && t.dim() == 2 && t.numel() > 0, ShapeMismatchError, kComponent,
             what << " has shape " << (t.defined() ? t.sizes() : at::IntArrayRef{})
                  << "; expected a non-empty 2-D (out_features, in_features) matrix");
  PEFT_CHECK(at::isFloatingType(t.scalar_type()), ConfigError, kComponent,
             what << " has dtype " << t.scalar_type() << "; expected a floating dtype");
}

void check_rank(int64_t reduced_rank, const at::Tensor& matrix) {
  const int64_t max_rank = std::min(matrix.size(0), matrix.size(1));
  // Divergence from PEFT: PEFT does not check the rank; torch.diag(S)[:, 0:r] silently yields
  // min(out, in) components for a larger r (and nothing for r <= 0), which then fails or mis-shapes
  // when assigned to the adapter. We reject it up front.
  PEFT_CHECK(reduced_rank >= 1 && reduced_rank <= max_rank, ConfigError, kComponent,
             "reduced_rank (the LoRA r) is "
                 << reduced_rank << " for a weight of shape " << matrix.sizes()
                 << "; expected 1 <= r <= min(out_features, in_features) = " << max_rank);
}

// dequant(quant(res)) in float32 for a float32 (out, in) residual.
at::Tensor quantize_dequantize(const at::Tensor& res, int num_bits) {
  if (num_bits == 4) {
    // PEFT: bnb.nn.Params4bit(res.to("cpu"), requires_grad=False, compress_statistics=False,
    // quant_type="nf4") then bnb.functional.dequantize_4bit(qweight.data, qweight.quant_state).
    // Params4bit's default blocksize is 64, so Q is exactly the base weight a QLoRA (load_in_4bit,
    // nf4) model holds; the quant state's dtype is float32 (res is float32), so Q comes back in
    // float32.
    const quant::Quantized4bit q = quant::quantize_4bit(
        res, quant::QuantType::kNF4, /*blocksize=*/64, /*compress_statistics=*/false);
    return quant::dequantize_4bit(q, at::kFloat);
  }
  // num_bits == 8. PEFT: bnb.nn.Int8Params(res.to("cpu"), requires_grad=False).to(device), whose
  // _quantize casts to float16 before int8_vectorwise_quant, then
  // bnb.functional.int8_vectorwise_dequant(CB, SCB) (float32).
  const quant::QuantizedInt8 q = quant::int8_vectorwise_quant(res.to(at::kHalf));
  return quant::int8_vectorwise_dequant(q);
}

}  // namespace

std::pair<at::Tensor, at::Tensor> low_rank_decomposition(const at::Tensor& matrix,
                                                         int64_t reduced_rank) {
  check_matrix(matrix, "matrix");
  check_rank(reduced_rank, matrix);
  // PEFT: U, S, Vh = torch.linalg.svd(weight, full_matrices=False);
  //       L = U @ sqrt(diag(S)[:, :r]); R = sqrt(diag(S)[:r, :]) @ Vh.
  // Multiplying by a diagonal matrix is the same as scaling columns / rows (every other term is an
  // exact 0).
  auto [U, S, Vh] = at::linalg_svd(matrix, /*full_matrices=*/false);
  const at::Tensor sqrt_s = S.slice(0, 0, reduced_rank).sqrt();
  at::Tensor L = U.slice(1, 0, reduced_rank) * sqrt_s.unsqueeze(0);
  at::Tensor R = Vh.slice(0, 0, reduced_rank) * sqrt_s.unsqueeze(1);
  return {L, R};
}

LoftQResult loftq_init(const at::Tensor& weight, int num_bits, int64_t reduced_rank, int num_iter) {
  // PEFT (>= 0.20): `if num_bits not in [4, 8]: raise ValueError("Only nf4 and int8 quantization is
  // supported")`. Older PEFT also accepted 2 bits through its own NFQuantizer, which PEFT 0.20
  // removed.
  PEFT_CHECK(num_bits == 4 || num_bits == 8, ConfigError, kComponent,
             "loftq_bits is " << num_bits << "; supported: 4 (nf4) and 8 (int8)");
  PEFT_CHECK(num_iter >= 1, ConfigError, kComponent,
             "loftq_iter is " << num_iter << "; the number of iterations must be greater than 0");
  check_matrix(weight, "weight");
  check_rank(reduced_rank, weight);

  const at::Tensor W = weight.detach().to(at::kFloat);
  at::Tensor res = W;
  at::Tensor Q, L, R;
  for (int i = 0; i < num_iter; ++i) {
    Q = quantize_dequantize(res, num_bits);
    res = W - Q;
    std::tie(L, R) = low_rank_decomposition(res, reduced_rank);
    // PEFT: the residual for the next quantization; skipped after the last iteration (it is not
    // returned).
    if (i + 1 < num_iter) res = W - at::mm(L, R);
  }
  // PEFT: lora_A, lora_B = R, L; return dequantized_weight.to(device=device, dtype=dtype), lora_A,
  // lora_B.
  return LoftQResult{Q.to(weight.scalar_type()), R, L};
}

std::pair<at::Tensor, at::Tensor> loftq_init_new(const at::Tensor& dequantized,
                                                 const at::Tensor& weight, int64_t reduced_rank) {
  check_matrix(weight, "weight");
  check_matrix(dequantized, "dequantized weight");
  PEFT_CHECK(dequantized.sizes() == weight.sizes(), ShapeMismatchError, kComponent,
             "dequantized weight has shape " << dequantized.sizes()
                                             << " but the original weight has " << weight.sizes()
                                             << "; expected the same shape");
  check_rank(reduced_rank, weight);
  // PEFT: weight = weight.to(float32); residual = weight - dequantized_weight (type promotion to
  // float32); L, R = _low_rank_decomposition(residual); return R, L.
  const at::Tensor residual =
      weight.detach().to(at::kFloat) - dequantized.detach().to(weight.device(), at::kFloat);
  auto [L, R] = low_rank_decomposition(residual, reduced_rank);
  return {R, L};
}

std::pair<at::Tensor, at::Tensor> loftq_init_new(const quant::Quantized4bit& q,
                                                 const at::Tensor& weight, int64_t reduced_rank) {
  check_matrix(weight, "weight");
  PEFT_CHECK(at::IntArrayRef(q.shape) == weight.sizes(), ShapeMismatchError, kComponent,
             "quantized weight has shape " << at::IntArrayRef(q.shape)
                                           << " but the original weight has " << weight.sizes()
                                           << "; expected the same shape");
  // PEFT: bnb.functional.dequantize_4bit(qweight.data, qweight.quant_state) -> the quant state's
  // dtype.
  return loftq_init_new(quant::dequantize_4bit(q), weight, reduced_rank);
}

double loftq_error(const at::Tensor& weight, const at::Tensor& dequantized,
                   const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling) {
  check_matrix(weight, "weight");
  check_matrix(dequantized, "dequantized weight");
  check_matrix(lora_A, "lora_A");
  check_matrix(lora_B, "lora_B");
  PEFT_CHECK(dequantized.sizes() == weight.sizes() && lora_B.size(0) == weight.size(0) &&
                 lora_A.size(1) == weight.size(1) && lora_B.size(1) == lora_A.size(0),
             ShapeMismatchError, kComponent,
             "shapes W " << weight.sizes() << ", Q " << dequantized.sizes() << ", A "
                         << lora_A.sizes() << ", B " << lora_B.sizes()
                         << "; expected W, Q (out, in), A (r, in), B (out, r)");
  const auto dev = weight.device();
  const at::Tensor W = weight.detach().to(at::kDouble);
  const at::Tensor Q = dequantized.detach().to(dev, at::kDouble);
  const at::Tensor BA =
      at::mm(lora_B.detach().to(dev, at::kDouble), lora_A.detach().to(dev, at::kDouble));
  return (W - (Q + scaling * BA)).pow(2).sum().sqrt().item<double>();
}

}  // namespace peft::init
