// NF4 / FP4 blockwise 4-bit quantization as bitsandbytes' quantize_4bit / dequantize_4bit
// (kQuantizeBlockwise and kDequantizeBlockwise in csrc/kernels.cu), with the optional double
// quantization of the absmax.
#include <ATen/ATen.h>

#include <array>
#include <sstream>
#include <vector>

#include "peft/error.h"
#include "peft/quant/quantize.h"

namespace peft::quant {

namespace {

// dDequantizeNF4 / get_4bit_type("nf4"), ascending: nibble i -> kNF4[i].
constexpr std::array<float, 16> kNF4 = {-1.0f,
                                        -0.6961928009986877f,
                                        -0.5250730514526367f,
                                        -0.39491748809814453f,
                                        -0.28444138169288635f,
                                        -0.18477343022823334f,
                                        -0.09105003625154495f,
                                        0.0f,
                                        0.07958029955625534f,
                                        0.16093020141124725f,
                                        0.24611230194568634f,
                                        0.33791524171829224f,
                                        0.44070982933044434f,
                                        0.5626170039176941f,
                                        0.7229568362236023f,
                                        1.0f};

// dQuantizeNF4's decision thresholds (kernels.cu), ascending: nibble = number of thresholds
// strictly below x.
constexpr std::array<float, 15> kNF4Thresholds = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};

// get_4bit_type("fp4") before the division by 12, in nibble order (bit 3 = sign).
constexpr std::array<float, 16> kFP4Raw = {0.0f,  0.0625f, 8.0f,  12.0f,    4.0f,  6.0f,
                                           2.0f,  3.0f,    -0.0f, -0.0625f, -8.0f, -12.0f,
                                           -4.0f, -6.0f,   -2.0f, -3.0f};

// dQuantizeFP4's thresholds on |x| (literals of kernels.cu), ascending, and the 3-bit magnitude
// code of each interval: 0, 0.0625, 2, 3, 4, 6, 8, 12 (/12) are 0b000, 0b001, 0b110, 0b111, 0b100,
// 0b101, 0b010, 0b011.
constexpr std::array<float, 7> kFP4Thresholds = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                                 0.4166667f,  0.583333f,  0.8333333f};
constexpr std::array<int64_t, 8> kFP4RankToBits = {0b000, 0b001, 0b110, 0b111,
                                                   0b100, 0b101, 0b010, 0b011};

at::Tensor float_tensor(const float* p, size_t count) {
  return at::from_blob(const_cast<float*>(p), {static_cast<int64_t>(count)},
                       at::TensorOptions().dtype(at::kFloat))
      .clone();
}

at::Tensor code_tensor(QuantType type) {
  const std::vector<float> c = type == QuantType::kNF4 ? nf4_code() : fp4_code();
  return float_tensor(c.data(), c.size());
}

void check_dtype(at::ScalarType st, const char* component, const char* what) {
  PEFT_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, ConfigError, component,
             what << " dtype " << st << " is not supported; expected float32, float16 or bfloat16");
}

// Nibbles (int64, same length as `normed`) of values already scaled to [-1, 1].
at::Tensor quantize_nibbles(const at::Tensor& normed, QuantType type) {
  if (type == QuantType::kNF4) {
    const at::Tensor thr = float_tensor(kNF4Thresholds.data(), kNF4Thresholds.size());
    return at::bucketize(normed, thr, /*out_int32=*/false, /*right=*/false);
  }
  const at::Tensor thr = float_tensor(kFP4Thresholds.data(), kFP4Thresholds.size());
  const at::Tensor bits =
      at::tensor(std::vector<int64_t>(kFP4RankToBits.begin(), kFP4RankToBits.end()));
  const at::Tensor rank = at::bucketize(normed.abs(), thr, /*out_int32=*/false, /*right=*/false);
  // Sign bit from x < 0 as in dQuantizeFP4: tiny negatives that round to 0 keep 0b1000 (-0.0 not).
  return bits.index_select(0, rank) + (normed < 0).to(at::kLong) * 8;
}

}  // namespace

QuantType parse_quant_type(const std::string& name) {
  if (name == "nf4") return QuantType::kNF4;
  if (name == "fp4") return QuantType::kFP4;
  throw ConfigError("quant_type",
                    "\"" + name + "\" is not a 4-bit quant_type; expected one of \"nf4\", \"fp4\"");
}

std::string to_string(QuantType type) { return type == QuantType::kNF4 ? "nf4" : "fp4"; }

std::vector<float> nf4_code() { return {kNF4.begin(), kNF4.end()}; }

std::vector<float> fp4_code() {
  // data /= data.abs().max() in float32, as get_4bit_type; equals dDequantizeFP4Tree's literals.
  std::vector<float> out(kFP4Raw.size());
  for (size_t i = 0; i < kFP4Raw.size(); ++i) out[i] = kFP4Raw[i] / 12.0f;
  return out;
}

Quantized4bit quantize_4bit(const at::Tensor& W, QuantType quant_type, int64_t blocksize,
                            bool compress_statistics) {
  validate_blocksize(blocksize, "quantize_4bit");
  check_dtype(W.scalar_type(), "quantize_4bit", "weight");
  PEFT_CHECK(W.numel() > 0, ShapeMismatchError, "quantize_4bit",
             "weight is empty; expected at least one value");

  const int64_t n = W.numel();
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  at::Tensor x = W.detach().to(at::kFloat).reshape({-1});
  // The last block is padded with zeros (the kernel loads 0 past the end), which leaves its absmax
  // unchanged.
  if (nblocks * blocksize != n) x = at::constant_pad_nd(x, {0, nblocks * blocksize - n}, 0.0);
  const at::Tensor blocks = x.view({nblocks, blocksize});
  const at::Tensor absmax = blocks.abs().amax({1});
  // kQuantizeBlockwise: normed = x * (1.0f / absmax), in float32, no clamp.
  const at::Tensor normed = (blocks * absmax.reciprocal().unsqueeze(1)).reshape({-1});
  at::Tensor nib = quantize_nibbles(normed, quant_type);
  // An all-zero block gives NaN normed values; every comparison of the kernel's tree is then false,
  // which is nibble 0 for both NF4 and FP4. bucketize has no such rule, so set it explicitly.
  const at::Tensor zero_block =
      (absmax == 0).unsqueeze(1).expand({nblocks, blocksize}).reshape({-1});
  nib = nib.masked_fill(zero_block, 0);

  // Pack pairs: first element in the high nibble. An odd n takes the (zero) padding value as the
  // last low nibble; n odd implies a partial last block because blocksize is even, so that element
  // exists.
  const int64_t bytes = (n + 1) / 2;
  const at::Tensor pairs = nib.slice(0, 0, 2 * bytes).view({bytes, 2});
  Quantized4bit q;
  q.packed = (pairs.select(1, 0).bitwise_left_shift(4).bitwise_or(pairs.select(1, 1)))
                 .to(at::kByte)
                 .view({bytes, 1});
  q.blocksize = blocksize;
  q.quant_type = quant_type;
  q.shape = W.sizes().vec();
  q.dtype = W.scalar_type();

  if (!compress_statistics) {
    q.absmax = absmax;
    return q;
  }
  // quantize_4bit(compress_statistics=True): offset = absmax.mean(); absmax -= offset;
  // quantize_blockwise(absmax, blocksize=256) with the dynamic map.
  const at::Tensor offset = absmax.mean();
  const QuantizedBlockwise nested = quantize_blockwise(absmax - offset, kNestedBlocksize);
  q.nested = true;
  q.absmax = nested.codes;
  q.nested_absmax = nested.absmax;
  q.nested_code = nested.code;
  q.nested_blocksize = nested.blocksize;
  q.offset = offset.item<float>();
  return q;
}

at::Tensor dequantize_absmax(const Quantized4bit& q) {
  if (!q.nested) {
    PEFT_CHECK(q.absmax.scalar_type() == at::kFloat, ConfigError, "dequantize_4bit",
               "absmax dtype " << q.absmax.scalar_type()
                               << "; expected float32 (or uint8 with nested = true)");
    return q.absmax;
  }
  QuantizedBlockwise b;
  b.codes = q.absmax;
  b.absmax = q.nested_absmax;
  b.code = q.nested_code;
  b.blocksize = q.nested_blocksize;
  return dequantize_blockwise(b) + static_cast<double>(q.offset);
}

at::Tensor dequantize_4bit(const Quantized4bit& q) { return dequantize_4bit(q, q.dtype); }

at::Tensor dequantize_4bit(const Quantized4bit& q, at::ScalarType dtype) {
  validate_blocksize(q.blocksize, "dequantize_4bit");
  check_dtype(dtype, "dequantize_4bit", "output");
  int64_t n = 1;
  for (int64_t s : q.shape) n *= s;
  const int64_t nblocks = (n + q.blocksize - 1) / q.blocksize;
  PEFT_CHECK(q.packed.scalar_type() == at::kByte, ConfigError, "dequantize_4bit",
             "packed dtype " << q.packed.scalar_type() << "; expected uint8");
  PEFT_CHECK(n > 0 && q.packed.numel() == (n + 1) / 2, ShapeMismatchError, "dequantize_4bit",
             "packed has " << q.packed.numel() << " bytes; expected " << (n + 1) / 2
                           << " for shape " << at::IntArrayRef(q.shape));
  PEFT_CHECK(q.absmax.numel() == nblocks, ShapeMismatchError, "dequantize_4bit",
             "absmax has " << q.absmax.numel() << " values; expected " << nblocks << " (" << n
                           << " values in blocks of " << q.blocksize << ")");
  const at::Tensor absmax = dequantize_absmax(q);

  const at::Tensor p = q.packed.reshape({-1}).to(at::kLong);
  at::Tensor nib =
      at::stack({p.bitwise_right_shift(4), p.bitwise_and(15)}, 1).reshape({-1}).slice(0, 0, n);
  at::Tensor v = code_tensor(q.quant_type).index_select(0, nib);
  if (nblocks * q.blocksize != n) v = at::constant_pad_nd(v, {0, nblocks * q.blocksize - n}, 0.0);
  // kDequantizeBlockwise: code * absmax in float32, then the cast to the output dtype.
  v = v.view({nblocks, q.blocksize}) * absmax.reshape({nblocks, 1});
  return v.reshape({-1}).slice(0, 0, n).view(q.shape).to(dtype);
}

}  // namespace peft::quant
