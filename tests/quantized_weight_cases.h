// Shared by the QuantizedWeight tests: the test hook that forces small tiles, the 4-bit case list,
// options and exact comparisons.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/torch.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "peft/quant/quantized_weight.h"

namespace peft::quant {
// Test hook (friend of QuantizedWeight): force small tiles and the device-generic decode.
struct QuantizedWeightTestAccess {
  static void set_tile_rows(QuantizedWeight& w, int64_t rows) { w.tile_rows_ = rows; }
  static void force_aten_decode(QuantizedWeight& w, bool on) { w.force_aten_decode_ = on; }
};
}  // namespace peft::quant

namespace peft::test::quant {

using peft::quant::QuantizedWeight;
using peft::quant::QuantizedWeightTestAccess;
using peft::quant::QuantizeOptions;
using peft::quant::QuantMethod;

// Empty when allclose(actual, expected, atol, rtol) (NaN counts as a mismatch); otherwise the worst
// element.
inline std::string mismatch(const at::Tensor& actual, const at::Tensor& expected, double atol,
                            double rtol = 0.0) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream os;
    os << "shape " << actual.sizes() << " != expected " << expected.sizes();
    return os.str();
  }
  if (actual.numel() == 0) return "";
  const auto a = actual.detach().to(torch::kCPU, torch::kDouble);
  const auto e = expected.detach().to(torch::kCPU, torch::kDouble);
  const auto diff = (a - e).abs();
  const auto bad = (diff > atol + rtol * e.abs()).logical_or(diff.isnan());
  if (!bad.any().item<bool>()) return "";
  const int64_t i = diff.flatten().nan_to_num(1e300).argmax().item<int64_t>();
  std::ostringstream os;
  os << "max |diff| " << diff.flatten()[i].item<double>() << " at " << i << " (actual "
     << a.flatten()[i].item<double>() << ", expected " << e.flatten()[i].item<double>() << "), "
     << bad.sum().item<int64_t>() << " of " << a.numel() << " outside atol " << atol << " rtol "
     << rtol;
  return os.str();
}

inline bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && torch::equal(a, b);
}

inline QuantizeOptions options(QuantMethod m, bool nested = false, int64_t blocksize = 64,
                               double threshold = 0.0) {
  QuantizeOptions o;
  o.method = m;
  o.double_quant = nested;
  o.blocksize = blocksize;
  o.int8_threshold = threshold;
  return o;
}

struct Case4bit {
  QuantMethod method;
  bool nested;
  int64_t out, in, blocksize, tile_rows;  // tile_rows 0: the default
};

inline std::string name(const Case4bit& c) {
  std::ostringstream os;
  os << peft::quant::to_string(c.method) << (c.nested ? "+dq" : "") << " (" << c.out << ", " << c.in
     << ") bs " << c.blocksize << " tile " << c.tile_rows;
  return os.str();
}

// NF4 / FP4, with and without double quantization; (37, 29) and (300, 100) have in * out not a
// multiple of the blocksize, and forced tiles of 7 / 3 rows (203 / 300 values) start and end inside
// blocks of 64.
inline const std::vector<Case4bit> kCases = {
    {QuantMethod::kNF4, false, 64, 128, 64, 0},  {QuantMethod::kFP4, false, 64, 128, 64, 0},
    {QuantMethod::kNF4, true, 64, 128, 64, 0},   {QuantMethod::kNF4, false, 37, 29, 64, 7},
    {QuantMethod::kFP4, true, 37, 29, 64, 7},    {QuantMethod::kNF4, true, 37, 29, 64, 0},
    {QuantMethod::kNF4, false, 300, 100, 64, 3}, {QuantMethod::kFP4, false, 300, 100, 128, 3},
    {QuantMethod::kNF4, true, 300, 100, 64, 0},  {QuantMethod::kNF4, true, 300, 100, 256, 11},
};

inline std::shared_ptr<QuantizedWeight> make(const Case4bit& c, const at::Tensor& W) {
  auto q = QuantizedWeight::quantize(W, options(c.method, c.nested, c.blocksize));
  if (c.tile_rows > 0) QuantizedWeightTestAccess::set_tile_rows(*q, c.tile_rows);
  return q;
}

}  // namespace peft::test::quant
