// bitsandbytes' dynamic 8-bit map and its blockwise quantization (quantize_blockwise /
// dequantize_blockwise), used here for the double quantization of the 4-bit absmax.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "peft/error.h"
#include "peft/quant/quantize.h"

namespace peft::quant {

namespace {

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), built with the same float32
// tensor ops as the Python (linspace, midpoint, multiply by a double scalar) so the values are
// bit-identical: for exponent i = 0..6 the 2^i midpoints of linspace(0.1, 1, 2^i + 1) scaled by
// ±10^(i-6), plus 0 and 1, sorted. (additional_items is 0 for these arguments, so that branch of
// the Python is omitted.)
std::vector<float> build_dynamic_map() {
  std::vector<double> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = (int64_t{1} << i) + 1;
    const at::Tensor boundaries =
        at::linspace(0.1, 1.0, items, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor means = (boundaries.slice(0, 0, items - 1) + boundaries.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -6 + i);
    for (const double sign : {1.0, -1.0}) {
      const at::Tensor v = (means * (sign * scale)).contiguous();
      const float* p = v.data_ptr<float>();
      data.insert(data.end(), p, p + v.numel());
    }
  }
  data.push_back(0.0);
  data.push_back(1.0);
  std::sort(data.begin(), data.end());
  std::vector<float> out(data.size());
  std::transform(data.begin(), data.end(), out.begin(),
                 [](double d) { return static_cast<float>(d); });
  return out;
}

}  // namespace

std::vector<float> dynamic_map() {
  static const std::vector<float> kMap = build_dynamic_map();
  return kMap;
}

void validate_blocksize(int64_t blocksize, const std::string& component) {
  const bool ok = std::find(std::begin(kAllowedBlocksizes), std::end(kAllowedBlocksizes),
                            blocksize) != std::end(kAllowedBlocksizes);
  PEFT_CHECK(
      ok, ConfigError, component,
      "blocksize " << blocksize
                   << " is not supported; expected one of 64, 128, 256, 512, 1024, 2048, 4096"
                   << " (bitsandbytes' block sizes)");
}

QuantizedBlockwise quantize_blockwise(const at::Tensor& A, int64_t blocksize) {
  validate_blocksize(blocksize, "quantize_blockwise");
  const auto st = A.scalar_type();
  PEFT_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, ConfigError,
             "quantize_blockwise",
             "input dtype " << st << " is not supported; expected float32, float16 or bfloat16");
  PEFT_CHECK(A.numel() > 0, ShapeMismatchError, "quantize_blockwise",
             "input is empty; expected at least one value");

  const std::vector<float> map = dynamic_map();
  const at::Tensor code = at::tensor(map, at::TensorOptions().dtype(at::kFloat));
  const int64_t n = A.numel();
  const int64_t nblocks = (n + blocksize - 1) / blocksize;
  at::Tensor x = A.detach().to(at::kFloat).reshape({-1});
  // bitsandbytes pads the last block; zeros leave its absmax unchanged.
  if (nblocks * blocksize != n) x = at::constant_pad_nd(x, {0, nblocks * blocksize - n}, 0.0);
  const at::Tensor blocks = x.view({nblocks, blocksize});
  const at::Tensor absmax = blocks.abs().amax({1});
  // Same arithmetic as the kernels: x * (1 / absmax) in float32.
  const at::Tensor normed = (blocks * absmax.reciprocal().unsqueeze(1)).reshape({-1});

  // Nearest code value, ties to the lower index, as bitsandbytes' CPU quantize_block: take the
  // largest code <= x, then step right when the right neighbour is strictly closer.
  const at::Tensor lower =
      (at::bucketize(normed, code, /*out_int32=*/false, /*right=*/true) - 1).clamp(0, 254);
  const at::Tensor upper = lower + 1;
  const at::Tensor dist_lower = (normed - code.index_select(0, lower)).abs();
  const at::Tensor dist_upper = (normed - code.index_select(0, upper)).abs();
  at::Tensor idx = at::where(dist_upper < dist_lower, upper, lower);
  // Divergence from bitsandbytes: an all-zero block (absmax 0) gives NaN normed values there; we
  // store the index of 0.0 (127). Dequantization gives 0 either way.
  const at::Tensor zero_block =
      (absmax == 0).unsqueeze(1).expand({nblocks, blocksize}).reshape({-1});
  idx = idx.masked_fill(zero_block, 127);

  QuantizedBlockwise q;
  q.codes = idx.slice(0, 0, n).to(at::kByte).view(A.sizes());
  q.absmax = absmax;
  q.code = code;
  q.blocksize = blocksize;
  return q;
}

at::Tensor dequantize_blockwise(const QuantizedBlockwise& q) {
  validate_blocksize(q.blocksize, "dequantize_blockwise");
  PEFT_CHECK(q.codes.scalar_type() == at::kByte, ConfigError, "dequantize_blockwise",
             "codes dtype " << q.codes.scalar_type() << "; expected uint8");
  PEFT_CHECK(q.code.numel() == 256, ShapeMismatchError, "dequantize_blockwise",
             "code has " << q.code.numel() << " values; expected 256");
  const int64_t n = q.codes.numel();
  const int64_t nblocks = (n + q.blocksize - 1) / q.blocksize;
  PEFT_CHECK(q.absmax.numel() == nblocks, ShapeMismatchError, "dequantize_blockwise",
             "absmax has " << q.absmax.numel() << " values; expected " << nblocks << " (" << n
                           << " codes in blocks of " << q.blocksize << ")");
  at::Tensor v = q.code.to(at::kFloat).index_select(0, q.codes.reshape({-1}).to(at::kLong));
  if (nblocks * q.blocksize != n) v = at::constant_pad_nd(v, {0, nblocks * q.blocksize - n}, 0.0);
  v = v.view({nblocks, q.blocksize}) * q.absmax.to(at::kFloat).reshape({nblocks, 1});
  return v.reshape({-1}).slice(0, 0, n).view(q.codes.sizes());
}

}  // namespace peft::quant
