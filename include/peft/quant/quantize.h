// bitsandbytes-compatible quantization primitives: NF4/FP4 blockwise 4-bit (with optional double
// quantization of the absmax), 8-bit blockwise dynamic quantization, and LLM.int8 row-wise int8.
// Counterpart: bitsandbytes functional.py (quantize_4bit, dequantize_4bit, quantize_blockwise,
// int8_vectorwise_quant / _dequant).
//
// Where the tables come from (bitsandbytes-foundation/bitsandbytes):
//  - NF4 code book: get_4bit_type("nf4") in bitsandbytes/functional.py (= _NF4_QUANT_TABLE in
//    backends/utils.py, = dDequantizeNF4 in csrc/kernels.cu). Quantization uses the decision tree
//    of dQuantizeNF4 in csrc/kernels.cu (the same tree is in csrc/cpu_ops.cpp): its 15 float
//    thresholds are the midpoints of adjacent code values; a value equal to a threshold goes to
//    the lower code (`x > t`).
//  - FP4 code book: get_4bit_type("fp4") =
//    [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3] / 12
//    (nibble = sign bit 0b1000 + 3 magnitude bits; = dDequantizeFP4Tree). Quantization follows
//    dQuantizeFP4: sign from x < 0, then |x| against the 7 thresholds 0.00260417, 0.0859375,
//    0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333 (literals as written in kernels.cu,
//    ties to the smaller magnitude).
//  - Dynamic map: create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) in
//    functional.py, rebuilt with the same float32 tensor ops (linspace, midpoints, 10^(i-6)).
//  - Packing: the first element of each pair goes to the high nibble (kQuantizeBlockwise:
//    `q(vals[2j]) << 4 | q(vals[2j+1])`); packed has shape ((numel + 1) / 2, 1) uint8 like
//    bitsandbytes' `out`.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace peft::quant {

// bitsandbytes' quant_type strings "nf4" / "fp4".
enum class QuantType { kNF4, kFP4 };
// "nf4" / "fp4"; ConfigError listing both spellings otherwise.
QuantType parse_quant_type(const std::string& name);
std::string to_string(QuantType type);

// Block sizes bitsandbytes accepts for quantize_4bit / quantize_blockwise.
inline constexpr int64_t kAllowedBlocksizes[] = {64, 128, 256, 512, 1024, 2048, 4096};
// Block size of the second-level (nested) quantization of the absmax, as bitsandbytes'
// quantize_4bit.
inline constexpr int64_t kNestedBlocksize = 256;
// ConfigError from `component` unless blocksize is one of kAllowedBlocksizes.
void validate_blocksize(int64_t blocksize, const std::string& component);

// The 16 NF4 code values, ascending; index = nibble.
std::vector<float> nf4_code();
// The 16 FP4 code values in nibble order (not sorted): get_4bit_type("fp4").
std::vector<float> fp4_code();
// bitsandbytes' 256-entry signed dynamic map, ascending (create_dynamic_map(signed=True)).
std::vector<float> dynamic_map();

// bitsandbytes' quantize_blockwise with the dynamic map: per block of `blocksize` values, absmax
// (float32) and one uint8 index of the nearest code value to x / absmax.
struct QuantizedBlockwise {
  at::Tensor codes;   // uint8, same shape as the input
  at::Tensor absmax;  // float32 (nblocks)
  at::Tensor code;    // float32 (256): the dynamic map (bitsandbytes QuantState.code)
  int64_t blocksize = 4096;
};
QuantizedBlockwise quantize_blockwise(const at::Tensor& A, int64_t blocksize = 4096);
// code[codes] * absmax per block, float32, shape of `codes`.
at::Tensor dequantize_blockwise(const QuantizedBlockwise& q);

// bitsandbytes' Params4bit payload + QuantState. Field names follow QuantState.as_dict where one
// exists.
struct Quantized4bit {
  at::Tensor
      packed;  // uint8 ((numel + 1) / 2, 1): two codes per byte, first element in the high nibble
  // float32 (nblocks) absmax per block; with double quantization, uint8 (nblocks) indices into
  // nested_code.
  at::Tensor absmax;
  int64_t blocksize = 64;
  QuantType quant_type = QuantType::kNF4;
  std::vector<int64_t> shape;                    // original shape
  at::ScalarType dtype = at::ScalarType::Float;  // original dtype (dequantize_4bit returns it)
  // Double quantization (compress_statistics = true), bitsandbytes QuantState.state2 + offset:
  bool nested = false;
  at::Tensor
      nested_absmax;  // float32 (ceil(nblocks / 256)): absmax of each block of (absmax - offset)
  at::Tensor nested_code;  // float32 (256): the dynamic map
  int64_t nested_blocksize = kNestedBlocksize;
  float offset = 0.0f;  // mean of the first-level absmax, subtracted before the nested quantization
};

// W: any shape, float32/float16/bfloat16 (bitsandbytes' accepted dtypes). The last block is padded
// with zeros when numel is not a multiple of blocksize; an odd numel pads the last byte's low
// nibble with the code of 0.
Quantized4bit quantize_4bit(const at::Tensor& W, QuantType quant_type = QuantType::kNF4,
                            int64_t blocksize = 64, bool compress_statistics = false);
// First-level float32 absmax, undoing the double quantization when q.nested (code[absmax] *
// nested_absmax + offset).
at::Tensor dequantize_absmax(const Quantized4bit& q);
// code[nibble] * absmax per block in float32, reshaped to q.shape and cast to q.dtype.
at::Tensor dequantize_4bit(const Quantized4bit& q);
// Same, cast to `dtype` instead (bitsandbytes: dequantize_4bit(..., dtype=...)).
at::Tensor dequantize_4bit(const Quantized4bit& q, at::ScalarType dtype);

// LLM.int8 row-wise quantization (int8_vectorwise_quant with threshold 0): SCB = max |W| over the
// last dimension, CB = round_half_even(W * (127 / SCB)) as int8. Rows are all leading dimensions
// flattened.
struct QuantizedInt8 {
  at::Tensor CB;   // int8, same shape as W
  at::Tensor SCB;  // float32 (rows)
};
QuantizedInt8 int8_vectorwise_quant(const at::Tensor& W);
// CB * SCB * (1 / 127) in float32 (bitsandbytes multiplies by 7.874015718698502e-3), shape of CB.
at::Tensor int8_vectorwise_dequant(const QuantizedInt8& q);

}  // namespace peft::quant
