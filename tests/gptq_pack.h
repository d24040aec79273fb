// Test-only GPTQ writer: packs known integer codes by the checkpoint format's own rules (written
// independently of src/quant/gptq.cpp, element by element), a round-to-nearest quantizer that makes
// such codes from a float weight, and a GPTQ checkpoint folder made from a float one.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace peft::test {

struct GptqPacked {
  at::Tensor qweight, qzeros, scales, g_idx;
};

// q: int64 (in, out) codes in [0, 2^bits); z: int64 (groups, out) zero points; scales (groups,
// out); g_idx int64 (in). qweight word j of column o holds q[j p + k, o] at bits [k bits, (k + 1)
// bits), p = 32 / bits; qzeros the same along the output. v1: the packed zero words minus the word
// of ones, as a 32-bit wrap-around (GPTQModel's v2 -> v1 conversion).
GptqPacked pack_gptq(const at::Tensor& q, const at::Tensor& z, const at::Tensor& scales,
                     const at::Tensor& g_idx, int bits, bool v1);

struct GptqCodes {
  at::Tensor q, z, scales, g_idx;  // as pack_gptq takes them; scales float16
};
// Asymmetric min / max round-to-nearest per group of the float weight W (out, in). desc_act: the
// inputs are grouped in a shuffled order (a g_idx that is not i / group_size), as act-order makes.
GptqCodes rtn_quantize(const at::Tensor& W, int bits, int group_size, bool desc_act);
// scales * (q - z) as the dense (out, in) float32 weight, computed element by element in double.
at::Tensor dequantize_by_hand(const GptqCodes& c);

// Writes the model in `float_dir` as a GPTQ checkpoint folder `out_dir` (every Linear of the
// decoder layers quantized, lm_head and embeddings in float; config.json with quantization_config;
// the other files copied). Returns nothing; throws on failure.
void write_gptq_checkpoint(const std::string& float_dir, const std::string& out_dir, int bits,
                           int group_size, bool desc_act, bool v1);

}  // namespace peft::test
