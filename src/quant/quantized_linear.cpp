// The fused dequantise-and-multiply of a quantized Linear: bitsandbytes' MatMul4Bit (NF4 / FP4) and
// MatMul8bitLt (LLM.int8), one tile of rows decoded at a time into a reused buffer and multiplied,
// never the whole matrix; and the autograd function that gives gradients to the input and the bias
// (none to the frozen weight).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "peft/error.h"
#include "peft/quant/quantized_weight.h"
#include "quant_common.h"

namespace peft::quant {
namespace {

using detail::is_float_dtype;
using detail::kComponent;
using detail::kInt8Dequant;

// Batches of more rows than this use wide tiles (rows_per_gemm).
constexpr int64_t kSmallBatch = 16;
constexpr int64_t kWideTileBytes = int64_t{8} << 20;

// Rows per GEMM call for a batch of `batch` rows of x. Small batches (generation, small fine-tuning
// batches) use the base tile: the decoded tile stays in L2 next to x and the BLAS runs its
// small-matrix kernels. Larger batches make the BLAS pack x on every call (measured with in = 4096,
// batch 64: 4-row tiles 4x slower than one dense GEMM, 512-row tiles on par with it), so they use
// wide tiles of about 8 MiB: a whole number of base tiles (block alignment is kept), where the
// decode is negligible next to the GEMM. Still far from a dequantized copy of a large weight (64
// MiB for 4096 x 4096).
int64_t rows_per_gemm(int64_t tile_rows, int64_t in, int64_t out, int64_t bytes_per_value,
                      int64_t batch) {
  if (batch <= kSmallBatch) return tile_rows;
  const int64_t k = std::max<int64_t>(1, kWideTileBytes / (tile_rows * in * bytes_per_value));
  return std::min(out, tile_rows * k);
}

// How a GEMM "in the compute dtype" runs. On accelerators: natively in the compute dtype. On the
// CPU always as a float32 GEMM: for a bfloat16 / float16 compute dtype the operands are first
// rounded to it (exactly representable in float32) and the result is rounded back, which is a
// reduced-precision GEMM with float32 accumulation (what oneDNN's bfloat16 GEMM and cuBLAS do) up
// to summation order. Reasons: LibTorch 1.13's CPU has no float16 GEMM, and its bfloat16 GEMM costs
// tens of microseconds per call (oneDNN) or falls back to a naive loop on CPUs without AVX512-BF16,
// which a tile-wise kernel with hundreds of small GEMMs cannot afford.
struct GemmPlan {
  at::ScalarType compute;  // the dtype the operands and the result are rounded to
  at::ScalarType mm;       // the dtype the GEMM runs in
  bool emulated() const { return mm != compute; }
};
GemmPlan gemm_plan(at::ScalarType compute, const c10::Device& device) {
  return {compute, device.is_cpu() ? at::kFloat : compute};
}

// An operand (x, grad_y or bias) in the GEMM dtype: rounded to the compute dtype first.
at::Tensor gemm_operand(const at::Tensor& a, const GemmPlan& plan) {
  return (plan.emulated() ? a.to(plan.compute).to(plan.mm) : a.to(plan.mm)).contiguous();
}

// Keeps the (shallow-copied) weight alive in the autograd graph.
struct WeightCapsule : torch::CustomClassHolder {
  explicit WeightCapsule(std::shared_ptr<const QuantizedWeight> w) : weight(std::move(w)) {}
  std::shared_ptr<const QuantizedWeight> weight;
};

// bitsandbytes' MatMul4Bit / MatMul8bitLt autograd functions: gradients for x and bias, none for
// the weight.
struct QuantizedLinearFunction : torch::autograd::Function<QuantizedLinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& bias,
                            const std::shared_ptr<const QuantizedWeight>& weight) {
    ctx->saved_data["weight"] =
        c10::IValue::make_capsule(c10::make_intrusive<WeightCapsule>(weight));
    ctx->saved_data["x_dtype"] = x.scalar_type();
    ctx->saved_data["has_bias"] = bias.numel() != 0;
    ctx->saved_data["bias_dtype"] = bias.defined() ? bias.scalar_type() : x.scalar_type();
    // Grad mode is off inside forward, so this runs the plain kernel. An empty bias stands for none
    // (LibTorch 1.13's Function::apply cannot take an undefined tensor input).
    return weight->linear(x, bias.numel() == 0 ? at::Tensor() : bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& gy = grads[0];
    at::Tensor gx, gb;
    if (gy.defined()) {
      const c10::intrusive_ptr<torch::CustomClassHolder> holder =
          ctx->saved_data["weight"].toCapsule();
      const QuantizedWeight& w = *static_cast<const WeightCapsule*>(holder.get())->weight;
      if (ctx->needs_input_grad(0))
        gx = w.grad_input(gy).to(ctx->saved_data["x_dtype"].toScalarType());
      if (ctx->needs_input_grad(1) && ctx->saved_data["has_bias"].toBool()) {
        gb = gy.reshape({-1, w.out_features()})
                 .sum(0)
                 .to(ctx->saved_data["bias_dtype"].toScalarType());
      }
    }
    return {gx, gb, at::Tensor()};
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Forward / backward

at::Tensor QuantizedWeight::linear(const at::Tensor& x, const at::Tensor& bias) const {
  PEFT_CHECK(x.defined(), ShapeMismatchError, kComponent,
             "no input given; expected (..., " << in_ << ")");
  const bool needs_grad =
      at::GradMode::is_enabled() && (x.requires_grad() || (bias.defined() && bias.requires_grad()));
  if (!needs_grad) return forward_impl(x, bias);
  // A shallow copy (the tensors are shared) that the autograd graph keeps alive.
  auto self = std::shared_ptr<const QuantizedWeight>(new QuantizedWeight(*this));
  return QuantizedLinearFunction::apply(x, bias.defined() ? bias : at::empty({0}, x.options()),
                                        self);
}

at::Tensor QuantizedWeight::forward_impl(const at::Tensor& x, const at::Tensor& bias) const {
  PEFT_CHECK(x.dim() >= 1 && x.size(-1) == in_, ShapeMismatchError, kComponent,
             "input shape " << x.sizes() << "; expected (..., " << in_ << ") for a (" << out_
                            << ", " << in_ << ") weight");
  PEFT_CHECK(is_float_dtype(x.scalar_type()), ConfigError, kComponent,
             "input dtype " << x.scalar_type() << "; expected float32, float16 or bfloat16");
  PEFT_CHECK(x.device() == device(), ConfigError, kComponent,
             "input is on " << x.device() << ", the quantized weight on " << device()
                            << " (hint: move the layer with to(device))");
  if (bias.defined()) {
    PEFT_CHECK(bias.dim() == 1 && bias.size(0) == out_, ShapeMismatchError, kComponent,
               "bias shape " << bias.sizes() << "; expected (" << out_ << ")");
  }
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = out_;
  const at::Tensor x2d = x.reshape({-1, in_});
  const at::Tensor y = q8_ ? forward_int8(x2d, bias) : forward_tiled(x2d, bias);
  return y.to(x.scalar_type()).view(out_shape);
}

void QuantizedWeight::for_each_tile(
    int64_t step, at::ScalarType round_to, at::ScalarType mm,
    const std::function<void(int64_t row0, int64_t row1, const at::Tensor& tile)>& f) const {
  // On the CPU every tile is decoded into this one buffer (float32, `step` rows).
  const at::Tensor buffer = use_cpu_decode()
                                ? at::empty({step, in_}, at::TensorOptions().dtype(at::kFloat))
                                : at::Tensor();
  for (int64_t r0 = 0; r0 < out_; r0 += step) {
    const int64_t r1 = std::min(out_, r0 + step);
    f(r0, r1, round_to != mm ? tile(r0, r1, buffer, round_to) : tile(r0, r1, buffer).to(mm));
  }
}

// MatMul4Bit, and GPTQ's dequantize-then-matmul: linear(x.to(compute_dtype),
// dequantize(W).to(compute_dtype), bias), one tile of rows at a time.
at::Tensor QuantizedWeight::forward_tiled(const at::Tensor& x2d, const at::Tensor& bias) const {
  const GemmPlan plan = gemm_plan(compute_dtype_, x2d.device());
  const at::Tensor xc = gemm_operand(x2d, plan);
  at::Tensor y = at::empty({xc.size(0), out_}, xc.options());
  const int64_t step = rows_per_gemm(tile_rows_, in_, out_, 4, xc.size(0));
  for_each_tile(step, plan.compute, plan.mm, [&](int64_t r0, int64_t r1, const at::Tensor& t) {
    // out[:, r0:r1] = x @ tile^T, written in place (a column block of y is a valid BLAS output).
    at::Tensor dst = y.narrow(1, r0, r1 - r0);
    at::mm_out(dst, xc, t.t());
  });
  if (bias.defined()) y.add_(gemm_operand(bias, plan));
  return plan.emulated() ? y.to(plan.compute) : y;
}

// MatMul8bitLt (bitsandbytes' int8_vectorwise_quant + int8_mixed_scaled_mm, default backend).
at::Tensor QuantizedWeight::forward_int8(const at::Tensor& x2d, const at::Tensor& bias) const {
  const QuantizedInt8& q = *q8_;
  const at::Tensor xf = x2d.to(at::kFloat).contiguous();
  // 1. Outliers (|x| >= threshold): their columns are held out of the int8 product. As
  // bitsandbytes, the outlier values themselves are zeroed before the row statistics, then whole
  // outlier columns are zeroed in the int8 data.
  at::Tensor xq = xf;
  at::Tensor cols;
  if (threshold_ > 0.0) {
    const at::Tensor outliers = xf.abs() >= threshold_;
    const at::Tensor col_mask = outliers.any(0);
    if (col_mask.any().item<bool>()) {
      cols = col_mask.nonzero().view({-1});
      xq = xf.masked_fill(outliers, 0.0);
    }
  }
  // 2. Row-wise absmax quantization of x: SCx = max |x|, CBx = round(x * (127 / SCx)) (127 / t is
  // computed as t.reciprocal() * 127 in PyTorch). An all-zero row stores 0 (bitsandbytes' 0 * inf
  // is undefined there). Divergence: MatMul8bitLt first casts x to float16 (a CUDA-kernel
  // requirement); here x is quantized from float32, so no float16 rounding or overflow.
  const at::Tensor scx = xq.abs().amax({1});
  at::Tensor cbx = at::round(xq * (scx.reciprocal() * 127.0).unsqueeze(1));
  cbx = cbx.masked_fill((scx == 0).unsqueeze(1), 0.0);
  if (cols.defined()) cbx.index_fill_(1, cols, 0.0);
  // 3. The integer product CBx @ CBw^T, in float64. bitsandbytes accumulates in int32, which is
  // exact: every term is an integer of magnitude <= 127^2 and the sums stay far below 2^31. float32
  // would not be exact (its partial sums round once they pass 2^24, i.e. with in_features ~1000 at
  // full scale), while float64 represents every such integer exactly (up to 2^53) in any summation
  // order, so `acc` equals bitsandbytes' int32 result bit for bit; its conversion to float32 below
  // then rounds as bitsandbytes' int32 -> float32 promotion does. Cost: one float64 GEMM (about
  // twice a float32 one), tile by tile so no float copy of the weight is made.
  const at::Tensor cbx64 = cbx.to(at::kDouble);
  at::Tensor acc = at::empty({cbx64.size(0), out_}, cbx64.options());
  const int64_t step = rows_per_gemm(tile_rows_, in_, out_, 8, cbx64.size(0));
  for (int64_t r0 = 0; r0 < out_; r0 += step) {
    const int64_t r1 = std::min(out_, r0 + step);
    at::Tensor dst = acc.narrow(1, r0, r1 - r0);
    at::mm_out(dst, cbx64, q.CB.narrow(0, r0, r1 - r0).to(at::kDouble).t());
  }
  // 4. int8_mm_dequant: acc * (SCx[:, None] * SCw[None, :]) / 127^2 (+ bias), in float32.
  // bitsandbytes writes the factor as a literal (6.200124e-05 in the default backend, 6.200012e-5f
  // in the CUDA kernel); 1 / 127^2 = 6.2000124e-05 is what both stand for.
  at::Tensor y =
      acc.to(at::kFloat) * (scx.unsqueeze(1) * q.SCB.unsqueeze(0)) * (1.0 / (127.0 * 127.0));
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  // 5. The outlier columns in float against the dequantized weight columns: y += x[:, outl] @
  // dequant(W)[:, outl]^T.
  if (cols.defined()) {
    const at::Tensor sub_a = xf.index_select(1, cols);
    const at::Tensor sub_b =
        q.CB.index_select(1, cols).to(at::kFloat) * q.SCB.unsqueeze(1) * kInt8Dequant;
    y.addmm_(sub_a, sub_b.t());
  }
  return y;
}

at::Tensor QuantizedWeight::grad_input(const at::Tensor& grad_y) const {
  PEFT_CHECK(grad_y.defined() && grad_y.dim() >= 1 && grad_y.size(-1) == out_, ShapeMismatchError,
             kComponent,
             "output gradient shape " << (grad_y.defined() ? grad_y.sizes() : at::IntArrayRef{})
                                      << "; expected (..., " << out_ << ")");
  PEFT_CHECK(is_float_dtype(grad_y.scalar_type()) && grad_y.device() == device(), ConfigError,
             kComponent,
             "output gradient is " << grad_y.scalar_type() << " on " << grad_y.device()
                                   << "; expected float32 / float16 / bfloat16 on " << device());
  // bitsandbytes: grad_A = grad_output @ dequantize(W) (4-bit: in the compute dtype; int8: CB * SCB
  // / 127).
  const GemmPlan plan = gemm_plan(compute_dtype_, grad_y.device());
  const at::Tensor g = gemm_operand(grad_y.reshape({-1, out_}), plan);
  at::Tensor gx = at::empty({g.size(0), in_}, g.options());
  const int64_t step = rows_per_gemm(tile_rows_, in_, out_, 4, g.size(0));
  for_each_tile(step, plan.compute, plan.mm, [&](int64_t r0, int64_t r1, const at::Tensor& t) {
    const at::Tensor g_tile = g.narrow(1, r0, r1 - r0);
    if (r0 == 0) {
      at::mm_out(gx, g_tile, t);
    } else {
      gx.addmm_(g_tile, t);
    }
  });
  std::vector<int64_t> shape = grad_y.sizes().vec();
  shape.back() = in_;
  return (plan.emulated() ? gx.to(plan.compute) : gx).to(grad_y.scalar_type()).view(shape);
}

}  // namespace peft::quant
