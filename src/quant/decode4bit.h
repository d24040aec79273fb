// The CPU decoder of packed 4-bit weights (private to src/quant): scalar and AVX2 lookups, bfloat16
// rounding.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

namespace peft::quant::detail {

// c10::BFloat16's round_to_nearest_even (NaN -> 0x7FC0) as a float32 value:
// .to(bfloat16).to(float32).
// (memcpy rather than std::bit_cast: the fuzz preset compiles this file as C++17.)
inline float round_bf16(float v) {
  uint32_t u = 0;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const uint32_t bits = (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : rounded;
  float out = 0;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// Rounds a contiguous float32 CPU tensor to `dtype` (bfloat16 / float16; float32: nothing) in
// place, as .to(dtype).to(float32) would (c10's round-to-nearest-even conversions), without
// allocating.
void round_in_place(const at::Tensor& t, at::ScalarType dtype);

// Decodes flat elements [e0, e1) of a packed 4-bit tensor into dst: lut[nibble] * absmax[element /
// blocksize], the first element of each byte in the high nibble. The same float32 product as
// dequantize_4bit, so the values are bit-identical. e0 may be odd and [e0, e1) may start and end
// inside blocks. bf16: each value rounded to bfloat16 on the way (the operand of an emulated
// bfloat16 GEMM).
void decode_4bit_cpu(bool bf16, const uint8_t* packed, const float* absmax, const float* lut,
                     int64_t blocksize, int64_t e0, int64_t e1, float* dst);

}  // namespace peft::quant::detail
