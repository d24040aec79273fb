// A frozen weight kept quantized in memory: bitsandbytes' Params4bit (NF4 / FP4) and Int8Params
// (LLM.int8), built from a float weight or a checkpoint's payload, decoded tile by tile. The fused
// dequantise-and-multiply and its autograd function live in quantized_linear.cpp, the bitsandbytes
// state-dict format in bnb_state.cpp, the CPU decoder in decode4bit.cpp.
#include "peft/quant/quantized_weight.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <sstream>
#include <vector>

#include "decode4bit.h"
#include "peft/error.h"
#include "quant_common.h"

namespace peft::quant {
namespace {

using detail::is_float_dtype;
using detail::kComponent;
using detail::kInt8Dequant;
using detail::kTileFloats;

void check_compute_dtype(at::ScalarType st, const char* what) {
  PEFT_CHECK(
      is_float_dtype(st), ConfigError, kComponent,
      what << " dtype " << st
           << " is not supported; expected float32, float16 or bfloat16 (bnb_4bit_compute_dtype)");
}

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
    case QuantMethod::kGPTQ:
      return "gptq";
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

std::shared_ptr<QuantizedWeight> QuantizedWeight::from_gptq(QuantizedGptq q,
                                                            at::ScalarType compute_dtype) {
  check_compute_dtype(compute_dtype, "compute");
  validate_gptq_options(q.options, kComponent);
  PEFT_CHECK(q.qweight.defined() && q.qweight.dim() == 2 && q.g_idx.defined(), ShapeMismatchError,
             kComponent, "GPTQ qweight / g_idx missing or not 2-D / 1-D");
  const int64_t out = q.qweight.size(1), in = q.g_idx.numel();
  validate_gptq(q, out, in, "", "GPTQ weight");
  auto w = std::shared_ptr<QuantizedWeight>(new QuantizedWeight());
  w->method_ = QuantMethod::kGPTQ;
  w->out_ = out;
  w->in_ = in;
  w->compute_dtype_ = compute_dtype;
  q.qweight = q.qweight.contiguous();
  q.g_idx = q.g_idx.to(at::kInt).contiguous();
  // Zero points and scales once as float32 (groups, out): the decode reads them per element.
  w->gptq_zeros_ = gptq_unpack_zeros(q).to(at::kFloat).contiguous();
  w->gptq_scales_ = q.scales.to(compute_dtype).to(at::kFloat).contiguous();
  w->gptq_ = std::move(q);
  w->init_tiles();
  return w;
}

void QuantizedWeight::init_tiles() {
  // int8 tiles are converted to float64 (see forward_int8), so they hold half as many values.
  const int64_t target = method_ == QuantMethod::kInt8 ? kTileFloats / 2 : kTileFloats;
  int64_t rows = std::max<int64_t>(1, target / in_);
  if (q4_) {
    const Quantized4bit& q = *q4_;
    // The first-level absmax in float32. A double-quantized weight keeps only its compressed scales
    // resident (that is the point of double quantization); tiles undo it for their own blocks
    // (absmax_range).
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

c10::Device QuantizedWeight::device() const { return packed_data().device(); }

at::Tensor QuantizedWeight::packed_data() const {
  if (q4_) return q4_->packed;
  if (q8_) return q8_->CB;
  return gptq_->qweight;
}

const QuantizedGptq& QuantizedWeight::gptq() const {
  PEFT_CHECK(gptq_.has_value(), Error, kComponent,
             "gptq() on a " << to_string(method_) << " weight; expected a GPTQ weight");
  return *gptq_;
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
  return (q4_.has_value() || gptq_.has_value()) && !force_aten_decode_ && device().is_cpu();
}

void QuantizedWeight::decode_gptq_cpu(int64_t row0, int64_t row1, float* dst) const {
  // W[o, i] = (q[i, o] - zero[g, o]) * scale[g, o], g = g_idx[i]: every value is read from its
  // packed word of qweight (in / p words of p codes along the input, one column per output).
  const QuantizedGptq& q = *gptq_;
  const int64_t bits = q.options.bits, p = 32 / bits, words = in_ / p, rows = row1 - row0;
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  const auto* qw = reinterpret_cast<const uint32_t*>(q.qweight.data_ptr<int32_t>());
  const int32_t* gi = q.g_idx.data_ptr<int32_t>();
  const float* zeros = gptq_zeros_.data_ptr<float>();
  const float* scales = gptq_scales_.data_ptr<float>();
  const float* zrow[16];
  const float* srow[16];
  for (int64_t w = 0; w < words; ++w) {
    const int64_t i0 = w * p;
    for (int64_t k = 0; k < p; ++k) {
      const int64_t g = gi[i0 + k];
      zrow[k] = zeros + g * out_ + row0;
      srow[k] = scales + g * out_ + row0;
    }
    const uint32_t* src = qw + w * out_ + row0;
    for (int64_t r = 0; r < rows; ++r) {
      const uint32_t word = src[r];
      float* d = dst + r * in_ + i0;
      for (int64_t k = 0; k < p; ++k) {
        const auto code = static_cast<float>((word >> (bits * k)) & mask);
        d[k] = (code - zrow[k][r]) * srow[k][r];
      }
    }
  }
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
  if (gptq_) {
    // The dequantized values are exact in float32; rounded to the compute dtype (the dtype GPTQ
    // kernels dequantize in), then to round_to.
    at::Tensor out;
    if (use_cpu_decode()) {
      out = !buffer.defined()        ? at::empty({rows, in_}, at::TensorOptions().dtype(at::kFloat))
            : buffer.size(0) == rows ? buffer
                                     : buffer.narrow(0, 0, rows);
      decode_gptq_cpu(row0, row1, out.data_ptr<float>());
      detail::round_in_place(out, compute_dtype_);
      if (round_to != compute_dtype_) detail::round_in_place(out, round_to);
      return out;
    }
    QuantizedGptq part = *gptq_;
    part.qweight = gptq_->qweight.narrow(1, row0, rows);
    const at::Tensor g = part.g_idx.to(at::kLong);
    const at::Tensor codes = gptq_unpack_codes(part).to(at::kFloat);  // (in, rows)
    const at::Tensor z = gptq_zeros_.narrow(1, row0, rows).index_select(0, g);
    const at::Tensor s = gptq_scales_.narrow(1, row0, rows).index_select(0, g);
    out = ((codes - z) * s).t().contiguous();
    return rounded(out.to(compute_dtype_).to(at::kFloat));
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
    const auto decode = [bf16](const uint8_t* packed, const float* absmax, const float* lut,
                               int64_t blocksize, int64_t e0_, int64_t e1_, float* dst) {
      detail::decode_4bit_cpu(bf16, packed, absmax, lut, blocksize, e0_, e1_, dst);
    };
    if (!q.nested) {
      decode(q.packed.data_ptr<uint8_t>(), absmax_f32_.data_ptr<float>(), code_.data_ptr<float>(),
             q.blocksize, e0, e1, out.data_ptr<float>());
    } else {
      // The tile's blocks [k0, k1): absmax = nested_code[absmax_u8[k]] * nested_absmax[k / 256] +
      // offset (as dequantize_absmax, in float32), then the decode runs on the tile as if it
      // started at block k0.
      const int64_t k0 = e0 / q.blocksize, k1 = (e1 - 1) / q.blocksize + 1;
      thread_local std::vector<float> scales;
      scales.resize(static_cast<size_t>(k1 - k0));
      const uint8_t* codes = q.absmax.data_ptr<uint8_t>();
      const float* code2 = q.nested_code.data_ptr<float>();
      const float* absmax2 = q.nested_absmax.data_ptr<float>();
      const float offset = q.offset;
      for (int64_t k = k0; k < k1; ++k) {
        scales[static_cast<size_t>(k - k0)] =
            code2[codes[k]] * absmax2[k / q.nested_blocksize] + offset;
      }
      const int64_t shift = k0 * q.blocksize;  // even (block sizes are), so a whole byte offset
      decode(q.packed.data_ptr<uint8_t>() + shift / 2, scales.data(), code_.data_ptr<float>(),
             q.blocksize, e0 - shift, e1 - shift, out.data_ptr<float>());
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
  const at::Tensor scale =
      block_scale.repeat_interleave(q.blocksize).narrow(0, e0 - k0 * q.blocksize, count);
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
  if (gptq_) {
    for (at::Tensor* t : {&gptq_->qweight, &gptq_->qzeros, &gptq_->scales, &gptq_->g_idx,
                          &gptq_zeros_, &gptq_scales_}) {
      *t = t->to(device);
    }
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
  if (gptq_) {
    // The checkpoint's tensors and the float32 zero points / scales the decode reads.
    for (const at::Tensor* t : {&gptq_->qweight, &gptq_->qzeros, &gptq_->scales, &gptq_->g_idx,
                                &gptq_zeros_, &gptq_scales_}) {
      add(*t);
    }
  }
  return total;
}

}  // namespace peft::quant
