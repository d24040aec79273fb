// LoftQ initialisation (quantization-aware LoRA init) as pure tensor functions, beside the other
// weight-based inits of the LoRA layers (init_lora_weights = "loftq" calls loftq_init from the
// layer). PEFT counterpart: src/peft/utils/loftq_utils.py — loftq_init (init_lora_weights =
// "loftq"), _loftq_init_new (the single-shot variant behind replace_lora_weights_loftq) and
// _low_rank_decomposition.
//
// LoftQ alternates quantization and a rank-r SVD so that the quantized base plus the adapter
// approximates the original weight W: starting from res = W, each iteration sets Q =
// dequant(quant(res)), res = W - Q and takes the rank-r SVD factors L (out, r), R (r, in) of that
// residual; the next iteration quantizes W - L R. The result is the last Q (the new base weight)
// with lora_A = R and lora_B = L, so that Q + B A ≈ W.
//
// Quantization (as PEFT >= 0.20, which removed its own NFQuantizer and always uses bitsandbytes):
//  - 4 bits: bitsandbytes NF4 (Params4bit: quant_type "nf4", blocksize 64, no double
//    quantization), i.e. exactly the base a QLoRA (load_in_4bit) model holds; done with
//    peft::quant::quantize_4bit / dequantize_4bit.
//  - 8 bits: bitsandbytes LLM.int8 row-wise absmax (Int8Params: float16 cast, then
//    int8_vectorwise_quant; dequantized with int8_vectorwise_dequant); done with
//    peft::quant::int8_vectorwise_quant / int8_vectorwise_dequant.
// Other bit widths: ConfigError (PEFT: ValueError "Only nf4 and int8 quantization is supported").
//
// Scaling: PEFT assigns A and B unchanged (NOT divided by the LoRA scaling lora_alpha / r), so a
// LoRA layer initialised this way computes Q + scaling * B A, which reproduces W as well as
// LoftQ intends only when scaling == 1 (lora_alpha == r). Use loftq_error(W, Q, A, B, 1.0) for
// LoftQ's own approximation error and the layer's scaling for what the model actually computes.
//
// Sign convention: each SVD component is defined up to a sign; A and B can therefore differ in sign
// per rank component between backends (LAPACK here, cuSOLVER in PEFT), while the product B A does
// not.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "peft/quant/quantize.h"

namespace peft::init {

struct LoftQResult {
  // Q: the last dequantized quantization; W's shape (out, in), dtype and device.
  at::Tensor dequantized;
  // R: (r, in), float32, on W's device (PEFT keeps A in float32 too).
  at::Tensor lora_A;
  // L: (out, r), float32, on W's device.
  at::Tensor lora_B;
};

// PEFT loftq_init(weight, num_bits, reduced_rank, num_iter). `weight`: 2-D (out, in) floating
// tensor (float32 / bfloat16 / float16 / float64); everything is computed in float32 on its device
// and only Q is cast back to its dtype (PEFT: `dequantized_weight.to(device=device, dtype=dtype)`;
// lora_A / lora_B stay float32, which is what PEFT assigns to the adapter's .weight.data).
// num_bits: 4 (NF4, blocksize 64) or 8 (int8 row-wise), else ConfigError. num_iter >= 1, else
// ConfigError. reduced_rank (the LoRA r) in [1, min(out, in)], else ConfigError. ShapeMismatchError
// unless `weight` is 2-D. With num_iter == 1, Q = dequant(quant(W)) and B A is the best rank-r
// approximation of W - Q.
LoftQResult loftq_init(const at::Tensor& weight, int num_bits, int64_t reduced_rank,
                       int num_iter = 1);

// PEFT _loftq_init_new(qweight, weight, num_bits=4, reduced_rank), used by
// replace_lora_weights_loftq on a model that is already quantized: with `dequantized` =
// dequant(qweight) (any floating dtype, promoted to float32) and `weight` the original (out, in)
// weight, residual = weight - dequantized and the rank-r SVD factors of it are returned as {A = R
// (r, in), B = L (out, r)} in float32 on weight's device. No iteration, no scaling.
// ShapeMismatchError unless both are 2-D of the same shape; ConfigError for reduced_rank outside
// [1, min(out, in)].
std::pair<at::Tensor, at::Tensor> loftq_init_new(const at::Tensor& dequantized,
                                                 const at::Tensor& weight, int64_t reduced_rank);
// Same, from the bitsandbytes 4-bit payload itself: dequantized = dequantize_4bit(q) in q.dtype, as
// PEFT's bnb.functional.dequantize_4bit(qweight.data, qweight.quant_state) (the quant state's
// dtype).
std::pair<at::Tensor, at::Tensor> loftq_init_new(const quant::Quantized4bit& q,
                                                 const at::Tensor& weight, int64_t reduced_rank);

// PEFT _low_rank_decomposition(weight, reduced_rank): U S Vh = svd(M, full_matrices=False) of a 2-D
// float tensor, L = U[:, :r] diag(sqrt(S[:r])) (out, r), R = diag(sqrt(S[:r])) Vh[:r] (r, in),
// returned as {L, R} (M's dtype). L R is the best rank-r approximation of M (Eckart–Young).
// ConfigError for r outside [1, min(M.shape)].
std::pair<at::Tensor, at::Tensor> low_rank_decomposition(const at::Tensor& matrix,
                                                         int64_t reduced_rank);

// ||W - (Q + scaling * B A)||_F computed in float64 (a diagnostic; PEFT has no such helper).
// Shapes: W and Q (out, in), A (r, in), B (out, r); ShapeMismatchError otherwise.
double loftq_error(const at::Tensor& weight, const at::Tensor& dequantized,
                   const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling = 1.0);

}  // namespace peft::init
