// What the quantized weight's construction and its fused kernel share (private to src/quant).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace peft::quant::detail {

inline constexpr const char* kComponent = "QuantizedWeight";
// A base tile of the fused kernel holds about this many float32 values: 128 KiB, which stays in L2
// next to a small batch of x. Measured single-threaded on LibTorch 1.13 / MKL (4096 x 4096 nf4, x
// (16, 4096)): 64 KiB tiles 8.9 ms, 128 KiB 8.0 ms, 256 KiB 31 ms (x + tile spill L2 and MKL
// switches to its packing kernels); dense float32 17 ms.
inline constexpr int64_t kTileFloats = 32768;
// int8_vectorwise_dequant's factor (bitsandbytes multiplies by 7.874015718698502e-3 = 1 / 127).
inline constexpr double kInt8Dequant = 7.874015718698502e-3;

inline bool is_float_dtype(c10::ScalarType st) {
  return st == c10::kFloat || st == c10::kHalf || st == c10::kBFloat16;
}

// "<dtype> <shape>" of a checkpoint tensor, for the messages that say what was found.
inline std::string describe(const at::Tensor& t) {
  std::ostringstream os;
  os << t.scalar_type() << " " << t.sizes();
  return os.str();
}

}  // namespace peft::quant::detail
