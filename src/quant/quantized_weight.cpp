// A frozen weight kept quantized in memory and the fused dequantise-and-multiply of a quantized
// Linear: bitsandbytes' Params4bit + MatMul4Bit (NF4 / FP4) and Int8Params + MatMul8bitLt
// (LLM.int8). The bitsandbytes state-dict format lives in bnb_state.cpp, the CPU decoder in decode4bit.cpp.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/types.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <sstream>
#include <vector>

#include "peft/error.h"
#include "decode4bit.h"
#include "peft/quant/quantized_weight.h"

namespace peft::quant {

namespace {

constexpr const char* kComponent = "QuantizedWeight";
// A base tile of the fused kernel holds about this many float32 values: 128 KiB, which stays in L2
// next to a small batch of x. Measured single-threaded on LibTorch 1.13 / MKL (4096 x 4096 nf4, x
// (16, 4096)): 64 KiB tiles 8.9 ms, 128 KiB 8.0 ms, 256 KiB 31 ms (x + tile spill L2 and MKL
// switches to its packing kernels); dense float32 17 ms.
constexpr int64_t kTileFloats = 32768;
// Batches of more rows than this use wide tiles (rows_per_gemm).
constexpr int64_t kSmallBatch = 16;
constexpr int64_t kWideTileBytes = int64_t{8} << 20;
// int8_vectorwise_dequant's factor (bitsandbytes multiplies by 7.874015718698502e-3 = 1 / 127).
constexpr double kInt8Dequant = 7.874015718698502e-3;

bool is_float_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kHalf || st == at::kBFloat16;
}

void check_compute_dtype(at::ScalarType st, const char* what) {
  PEFT_CHECK(
      is_float_dtype(st), ConfigError, kComponent,
      what << " dtype " << st
           << " is not supported; expected float32, float16 or bfloat16 (bnb_4bit_compute_dtype)");
}

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
    // Grad mode is off inside forward, so this runs the plain kernel. An empty bias stands for none (LibTorch
    // 1.13's Function::apply cannot take an undefined tensor input).
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

QuantMethod parse_quant_method(const std::string& name) {
  if (name == "nf4") return QuantMethod::kNF4;
  if (name == "fp4") return QuantMethod::kFP4;
  if (name == "int8") return QuantMethod::kInt8;
  throw ConfigError("quantize",
                    "\"" + name +
                        "\" is not a quantization method; expected one of \"nf4\", \"fp4\" (4-bit, "
                        "load_in_4bit) or \"int8\" (LLM.int8, load_in_8bit)");
}

std::string to_string(QuantMethod method) {
  switch (method) {
    case QuantMethod::kNF4:
      return "nf4";
    case QuantMethod::kFP4:
      return "fp4";
    case QuantMethod::kInt8:
      return "int8";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------------
// Construction

std::shared_ptr<QuantizedWeight> QuantizedWeight::quantize(const at::Tensor& W,
                                                           const QuantizeOptions& options) {
  PEFT_CHECK(W.defined() && W.dim() == 2 && W.numel() > 0, ShapeMismatchError, kComponent,
             "weight to quantize has shape "
                 << (W.defined() ? W.sizes() : at::IntArrayRef{})
                 << "; expected a non-empty 2-D (out_features, in_features) matrix "
                    "(hint: only Linear weights are quantized)");
  const at::ScalarType compute = options.compute_dtype.value_or(W.scalar_type());
  check_compute_dtype(compute, "compute");
  const at::Tensor w = W.detach();
  if (options.method == QuantMethod::kInt8) {
    return from_int8(int8_vectorwise_quant(w), compute, options.int8_threshold);
  }
  // The 4-bit primitives build their code books and thresholds on the CPU: quantize there, then
  // move back.
  const QuantType type = options.method == QuantMethod::kNF4 ? QuantType::kNF4 : QuantType::kFP4;
  const bool on_cpu = w.device().is_cpu();
  auto out = from_4bit(
      quantize_4bit(on_cpu ? w : w.to(at::kCPU), type, options.blocksize, options.double_quant),
      compute);
  if (!on_cpu) out->to(w.device());
  return out;
}

std::shared_ptr<QuantizedWeight> QuantizedWeight::from_4bit(Quantized4bit q,
                                                            at::ScalarType compute_dtype) {
  PEFT_CHECK(
      q.shape.size() == 2 && q.shape[0] > 0 && q.shape[1] > 0, ShapeMismatchError, kComponent,
      "4-bit weight shape " << at::IntArrayRef(q.shape)
                            << "; expected a non-empty 2-D (out_features, in_features) shape");
  const bool bs_ok = std::find(std::begin(kAllowedBlocksizes), std::end(kAllowedBlocksizes),
                               q.blocksize) != std::end(kAllowedBlocksizes);
  PEFT_CHECK(
      bs_ok, FormatError, kComponent,
      "4-bit blocksize " << q.blocksize << "; expected one of 64, 128, 256, 512, 1024, 2048, 4096");
  PEFT_CHECK(is_float_dtype(q.dtype), FormatError, kComponent,
             "4-bit original dtype " << q.dtype << "; expected float32, float16 or bfloat16");
  check_compute_dtype(compute_dtype, "compute");
  const int64_t n = q.shape[0] * q.shape[1];
  const int64_t nblocks = (n + q.blocksize - 1) / q.blocksize;
  PEFT_CHECK(q.packed.defined() && q.packed.scalar_type() == at::kByte, FormatError, kComponent,
             "4-bit packed data has dtype "
                 << (q.packed.defined() ? q.packed.scalar_type() : at::kByte)
                 << (q.packed.defined() ? "" : " (missing)") << "; expected uint8");
  PEFT_CHECK(q.packed.numel() == (n + 1) / 2, ShapeMismatchError, kComponent,
             "4-bit packed data has " << q.packed.numel() << " bytes; expected " << (n + 1) / 2
                                      << " for shape " << at::IntArrayRef(q.shape)
                                      << " (two values per byte)");
  const at::ScalarType absmax_dtype = q.nested ? at::kByte : at::kFloat;
  PEFT_CHECK(
      q.absmax.defined() && q.absmax.scalar_type() == absmax_dtype, FormatError, kComponent,
      "4-bit absmax is " << (q.absmax.defined() ? c10::toString(q.absmax.scalar_type()) : "missing")
                         << "; expected " << absmax_dtype
                         << (q.nested ? " (double quantization)" : " (no double quantization)"));
  PEFT_CHECK(q.absmax.numel() == nblocks, ShapeMismatchError, kComponent,
             "4-bit absmax has " << q.absmax.numel() << " values; expected " << nblocks << " (" << n
                                 << " values in blocks of " << q.blocksize << ")");
  const c10::Device device = q.packed.device();
  PEFT_CHECK(q.absmax.device() == device, FormatError, kComponent,
             "4-bit absmax is on " << q.absmax.device() << ", the packed data on " << device
                                   << "; expected one device");
  if (q.nested) {
    const bool nbs_ok = std::find(std::begin(kAllowedBlocksizes), std::end(kAllowedBlocksizes),
                                  q.nested_blocksize) != std::end(kAllowedBlocksizes);
    PEFT_CHECK(nbs_ok, FormatError, kComponent,
               "nested blocksize " << q.nested_blocksize << "; expected one of 64, 128, ..., 4096");
    const int64_t nested_blocks = (nblocks + q.nested_blocksize - 1) / q.nested_blocksize;
    PEFT_CHECK(
        q.nested_absmax.defined() && q.nested_absmax.scalar_type() == at::kFloat &&
            q.nested_absmax.numel() == nested_blocks && q.nested_absmax.device() == device,
        ShapeMismatchError, kComponent,
        "nested absmax must be float32 with "
            << nested_blocks << " values on " << device << "; found "
            << (q.nested_absmax.defined() ? q.nested_absmax.toString() : std::string("none")));
    PEFT_CHECK(q.nested_code.defined() && q.nested_code.scalar_type() == at::kFloat &&
                   q.nested_code.numel() == 256 && q.nested_code.device() == device,
               ShapeMismatchError, kComponent,
               "nested code must be the float32 256-value dynamic map on " << device);
  }
  auto w = std::shared_ptr<QuantizedWeight>(new QuantizedWeight());
  w->method_ = q.quant_type == QuantType::kNF4 ? QuantMethod::kNF4 : QuantMethod::kFP4;
  w->out_ = q.shape[0];
  w->in_ = q.shape[1];
  w->compute_dtype_ = compute_dtype;
  q.packed = q.packed.reshape({-1, 1}).contiguous();  // bitsandbytes' ((n + 1) / 2, 1)
  q.absmax = q.absmax.reshape({-1}).contiguous();
  if (q.nested) {
    q.nested_absmax = q.nested_absmax.reshape({-1}).contiguous();
    q.nested_code = q.nested_code.reshape({-1}).contiguous();
  }
  w->q4_ = std::move(q);
  w->init_tiles();
  return w;
}

std::shared_ptr<QuantizedWeight> QuantizedWeight::from_int8(QuantizedInt8 q,
                                                            at::ScalarType compute_dtype,
                                                            double threshold) {
  PEFT_CHECK(
      q.CB.defined() && q.CB.dim() == 2 && q.CB.numel() > 0, ShapeMismatchError, kComponent,
      "int8 weight shape " << (q.CB.defined() ? q.CB.sizes() : at::IntArrayRef{})
                           << "; expected a non-empty 2-D (out_features, in_features) matrix");
  PEFT_CHECK(q.CB.scalar_type() == at::kChar, FormatError, kComponent,
             "int8 weight (CB) dtype " << q.CB.scalar_type() << "; expected int8");
  PEFT_CHECK(q.SCB.defined() && q.SCB.scalar_type() == at::kFloat &&
                 q.SCB.numel() == q.CB.size(0) && q.SCB.device() == q.CB.device(),
             ShapeMismatchError, kComponent,
             "int8 row scales (SCB) must be float32 with "
                 << q.CB.size(0) << " values (one per output row) on " << q.CB.device()
                 << "; found " << (q.SCB.defined() ? q.SCB.toString() : std::string("none"))
                 << (q.SCB.defined() ? " of " + std::to_string(q.SCB.numel()) + " values" : ""));
  PEFT_CHECK(threshold >= 0.0, ConfigError, kComponent,
             "llm_int8_threshold " << threshold
                                   << "; expected >= 0 (0 disables the outlier decomposition)");
  check_compute_dtype(compute_dtype, "compute");
  auto w = std::shared_ptr<QuantizedWeight>(new QuantizedWeight());
  w->method_ = QuantMethod::kInt8;
  w->out_ = q.CB.size(0);
  w->in_ = q.CB.size(1);
  w->compute_dtype_ = compute_dtype;
  w->threshold_ = threshold;
  q.CB = q.CB.contiguous();
  q.SCB = q.SCB.reshape({-1}).contiguous();
  w->q8_ = std::move(q);
  w->init_tiles();
  return w;
}

void QuantizedWeight::init_tiles() {
  // int8 tiles are converted to float64 (see forward_int8), so they hold half as many values.
  const int64_t target = method_ == QuantMethod::kInt8 ? kTileFloats / 2 : kTileFloats;
  int64_t rows = std::max<int64_t>(1, target / in_);
  if (method_ != QuantMethod::kInt8) {
    const Quantized4bit& q = *q4_;
    // The first-level absmax in float32. A double-quantized weight keeps only its compressed scales resident
    // (that is the point of double quantization); tiles undo it for their own blocks (absmax_range).
    absmax_f32_ = q.nested ? at::Tensor() : q.absmax;
    const std::vector<float> code = q.quant_type == QuantType::kNF4 ? nf4_code() : fp4_code();
    code_ = at::tensor(code, at::TensorOptions().dtype(at::kFloat)).to(q.packed.device());
    // Keep tile borders on whole blocks: rows * in must be a multiple of the blocksize, i.e. rows a
    // multiple of m = blocksize / gcd(in, blocksize), when such a tile stays small (otherwise tiles
    // straddle blocks).
    const int64_t m = q.blocksize / std::gcd(in_, q.blocksize);
    if (m * in_ <= 2 * target) rows = std::max(m, rows / m * m);
  }
  tile_rows_ = std::min(rows, out_);
}

// ---------------------------------------------------------------------------------------------------------
// Accessors, dequantization

c10::Device QuantizedWeight::device() const {
  return q4_ ? q4_->packed.device() : q8_->CB.device();
}

const Quantized4bit& QuantizedWeight::q4() const {
  PEFT_CHECK(q4_.has_value(), Error, kComponent,
             "q4() on a " << to_string(method_) << " weight; expected a 4-bit (nf4 / fp4) weight");
  return *q4_;
}

const QuantizedInt8& QuantizedWeight::q8() const {
  PEFT_CHECK(q8_.has_value(), Error, kComponent,
             "q8() on a " << to_string(method_) << " weight; expected an int8 weight");
  return *q8_;
}

bool QuantizedWeight::use_cpu_decode() const {
  return q4_.has_value() && !force_aten_decode_ && q4_->packed.device().is_cpu();
}

at::Tensor QuantizedWeight::tile(int64_t row0, int64_t row1, const at::Tensor& buffer,
                                 at::ScalarType round_to) const {
  const int64_t rows = row1 - row0;
  const auto rounded = [round_to](const at::Tensor& t) {
    return round_to == at::kFloat ? t : t.to(round_to).to(at::kFloat);
  };
  if (q8_) {
    // int8_vectorwise_dequant on the rows: CB * SCB * (1 / 127) in float32, same operation order.
    return rounded(q8_->CB.narrow(0, row0, rows).to(at::kFloat) *
                   q8_->SCB.narrow(0, row0, rows).reshape({rows, 1}) * kInt8Dequant);
  }
  const Quantized4bit& q = *q4_;
  const int64_t e0 = row0 * in_, e1 = row1 * in_, count = e1 - e0;
  if (use_cpu_decode()) {
    // A full tile reuses the buffer itself (no new tensor per tile: the per-tile overhead matters
    // at a few rows).
    const at::Tensor out = !buffer.defined()
                               ? at::empty({rows, in_}, at::TensorOptions().dtype(at::kFloat))
                           : buffer.size(0) == rows ? buffer
                                                    : buffer.narrow(0, 0, rows);
    const bool bf16 = round_to == at::kBFloat16;
    const auto decode = [bf16](const uint8_t* packed, const float* absmax, const float* lut, int64_t blocksize,
                               int64_t e0_, int64_t e1_, float* dst) {
      detail::decode_4bit_cpu(bf16, packed, absmax, lut, blocksize, e0_, e1_, dst);
    };
    if (!q.nested) {
      decode(q.packed.data_ptr<uint8_t>(), absmax_f32_.data_ptr<float>(), code_.data_ptr<float>(),
             q.blocksize, e0, e1, out.data_ptr<float>());
    } else {
      // The tile's blocks [k0, k1): absmax = nested_code[absmax_u8[k]] * nested_absmax[k / 256] + offset (as
      // dequantize_absmax, in float32), then the decode runs on the tile as if it started at block k0.
      const int64_t k0 = e0 / q.blocksize, k1 = (e1 - 1) / q.blocksize + 1;
      thread_local std::vector<float> scales;
      scales.resize(static_cast<size_t>(k1 - k0));
      const uint8_t* codes = q.absmax.data_ptr<uint8_t>();
      const float* code2 = q.nested_code.data_ptr<float>();
      const float* absmax2 = q.nested_absmax.data_ptr<float>();
      const float offset = q.offset;
      for (int64_t k = k0; k < k1; ++k) {
        scales[static_cast<size_t>(k - k0)] = code2[codes[k]] * absmax2[k / q.nested_blocksize] + offset;
      }
      const int64_t shift = k0 * q.blocksize;  // even (block sizes are), so a whole byte offset
      decode(q.packed.data_ptr<uint8_t>() + shift / 2, scales.data(), code_.data_ptr<float>(), q.blocksize,
             e0 - shift, e1 - shift, out.data_ptr<float>());
    }
    if (round_to == at::kHalf) detail::round_in_place(out, at::kHalf);
    return out;
  }
  // Device-generic path (ATen ops): the bytes covering [e0, e1), unpacked high nibble first, looked
  // up in the code book and multiplied by the absmax of each element's block.
  const int64_t b0 = e0 / 2, b1 = (e1 + 1) / 2;
  const at::Tensor p = q.packed.reshape({-1}).slice(0, b0, b1).to(at::kLong);
  const at::Tensor nib = at::stack({p.bitwise_right_shift(4), p.bitwise_and(15)}, 1)
                             .reshape({-1})
                             .narrow(0, e0 - 2 * b0, count);
  const int64_t k0 = e0 / q.blocksize, k1 = (e1 - 1) / q.blocksize + 1;
  at::Tensor block_scale;
  if (q.nested) {
    block_scale = q.nested_code.index_select(0, q.absmax.slice(0, k0, k1).to(at::kLong)) *
                      q.nested_absmax.repeat_interleave(q.nested_blocksize).slice(0, k0, k1) +
                  static_cast<double>(q.offset);
  } else {
    block_scale = absmax_f32_.slice(0, k0, k1);
  }
  const at::Tensor scale = block_scale.repeat_interleave(q.blocksize)
                               .narrow(0, e0 - k0 * q.blocksize, count);
  return rounded((code_.index_select(0, nib) * scale).view({rows, in_}));
}

at::Tensor QuantizedWeight::dequantize_rows(int64_t row0, int64_t row1) const {
  PEFT_CHECK(0 <= row0 && row0 <= row1 && row1 <= out_, ShapeMismatchError, kComponent,
             "rows [" << row0 << ", " << row1 << "); expected a range within [0, " << out_ << ")");
  return tile(row0, row1, at::Tensor());
}

at::Tensor QuantizedWeight::dequantize() const {
  return dequantize_rows(0, out_).to(compute_dtype_);
}

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
  return QuantizedLinearFunction::apply(x, bias.defined() ? bias : at::empty({0}, x.options()), self);
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
  const at::Tensor y = q8_ ? forward_int8(x2d, bias) : forward_4bit(x2d, bias);
  return y.to(x.scalar_type()).view(out_shape);
}

// MatMul4Bit: linear(x.to(compute_dtype), dequantize_4bit(W).to(compute_dtype), bias), one tile of
// rows at a time.
at::Tensor QuantizedWeight::forward_4bit(const at::Tensor& x2d, const at::Tensor& bias) const {
  const GemmPlan plan = gemm_plan(compute_dtype_, x2d.device());
  const at::Tensor xc = gemm_operand(x2d, plan);
  at::Tensor y = at::empty({xc.size(0), out_}, xc.options());
  const int64_t step = rows_per_gemm(tile_rows_, in_, out_, 4, xc.size(0));
  const at::Tensor buffer = use_cpu_decode()
                                ? at::empty({step, in_}, at::TensorOptions().dtype(at::kFloat))
                                : at::Tensor();
  for (int64_t r0 = 0; r0 < out_; r0 += step) {
    const int64_t r1 = std::min(out_, r0 + step);
    const at::Tensor t =
        plan.emulated() ? tile(r0, r1, buffer, plan.compute) : tile(r0, r1, buffer).to(plan.mm);
    // out[:, r0:r1] = x @ tile^T, written in place (a column block of y is a valid BLAS output).
    at::Tensor dst = y.narrow(1, r0, r1 - r0);
    at::mm_out(dst, xc, t.t());
  }
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
  const at::Tensor buffer = use_cpu_decode()
                                ? at::empty({step, in_}, at::TensorOptions().dtype(at::kFloat))
                                : at::Tensor();
  for (int64_t r0 = 0; r0 < out_; r0 += step) {
    const int64_t r1 = std::min(out_, r0 + step);
    const at::Tensor t =
        plan.emulated() ? tile(r0, r1, buffer, plan.compute) : tile(r0, r1, buffer).to(plan.mm);
    const at::Tensor g_tile = g.narrow(1, r0, r1 - r0);
    if (r0 == 0) {
      at::mm_out(gx, g_tile, t);
    } else {
      gx.addmm_(g_tile, t);
    }
  }
  std::vector<int64_t> shape = grad_y.sizes().vec();
  shape.back() = in_;
  return (plan.emulated() ? gx.to(plan.compute) : gx).to(grad_y.scalar_type()).view(shape);
}

// ---------------------------------------------------------------------------------------------------------
// Device, memory

void QuantizedWeight::to(c10::Device device) {
  if (q4_) {
    Quantized4bit& q = *q4_;
    q.packed = q.packed.to(device);
    q.absmax = q.absmax.to(device);
    if (q.nested) {
      q.nested_absmax = q.nested_absmax.to(device);
      q.nested_code = q.nested_code.to(device);
    } else {
      absmax_f32_ = q.absmax;
    }
    code_ = code_.to(device);
  }
  if (q8_) {
    q8_->CB = q8_->CB.to(device);
    q8_->SCB = q8_->SCB.to(device);
  }
}

int64_t QuantizedWeight::nbytes() const {
  int64_t total = 0;
  const auto add = [&total](const at::Tensor& t) {
    if (t.defined()) total += static_cast<int64_t>(t.nbytes());
  };
  if (q4_) {
    add(q4_->packed);
    add(q4_->absmax);
    add(q4_->nested_absmax);
    add(q4_->nested_code);
    add(code_);
    // absmax_f32_ is q4_->absmax itself (plain) or absent (double quantization: decoded per tile).
  }
  if (q8_) {
    add(q8_->CB);
    add(q8_->SCB);
  }
  return total;
}

}  // namespace peft::quant
