// GPTQ-quantized Linear weights as Hugging Face checkpoints store them (transformers' GPTQConfig,
// written by AutoGPTQ / GPTQModel / optimum): the tensors of one layer, their packing, and the
// reference dequantization. The fused dequantise-and-multiply is QuantizedWeight's
// (quantized_weight.h, method kGPTQ).
//
// The format, as followed here (AutoGPTQ `qlinear_cuda_old.py` QuantLinear.pack / forward,
// GPTQModel `nn_modules/qlinear/torch.py` and `utils/model.py`
// convert_gptq_v1_to_v2_format_module, transformers' GPTQConfig):
//  - `qweight` int32 (in * bits / 32, out): the integer codes q[i, o] of W^T, packed along the
//    input dimension, 32 / bits codes per word, the lowest bits first: q[i, o] = (qweight[i / p,
//    o] >> (bits * (i % p))) & (2^bits - 1) with p = 32 / bits.
//  - `qzeros` int32 (groups, out * bits / 32): the zero points, packed the same way along the
//    output dimension. Checkpoint format "gptq" (v1, the default) stores zero - 1 (a historic
//    off-by-one of AutoGPTQ's packer); readers add 1 to every packed field by one whole-word
//    integer addition (GPTQModel adds 0x11111111 for 4 bits), wrapping as int32 does. "gptq_v2"
//    stores the zero points themselves.
//  - `scales` (groups, out), float16 as written (any float dtype is read).
//  - `g_idx` int32 (in): the group of every input feature; i / group_size without act-order
//    (desc_act = false), a permutation-derived order with it. Optional (older checkpoints): then
//    i / group_size.
//  - groups = ceil(in / group_size), group_size = -1 meaning one group of all inputs.
//  - W[o, i] = scales[g, o] * (q[i, o] - zero[g, o]) with g = g_idx[i], computed in the dtype of
//    the scales (the model's dtype once loaded): here in float32, which is exact, then rounded to
//    the compute dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace peft::quant {

// quantization_config.checkpoint_format: "gptq" (v1) or "gptq_v2".
enum class GptqFormat { kV1, kV2 };

// The layer-independent part of quantization_config (transformers' GPTQConfig).
struct GptqOptions {
  int64_t bits = 4;          // 2, 4 or 8 (3-bit packing spans words and is not read)
  int64_t group_size = 128;  // -1: one group per output column
  bool desc_act = false;     // act-order: g_idx is not i / group_size
  bool sym = true;           // symmetric quantization (informational: the zero points are stored)
  GptqFormat format = GptqFormat::kV1;
};

// One layer's GPTQ tensors (names as in the checkpoint) and its options.
struct QuantizedGptq {
  at::Tensor qweight;  // int32 (in * bits / 32, out)
  at::Tensor qzeros;   // int32 (groups, out * bits / 32)
  at::Tensor scales;   // float (groups, out)
  at::Tensor g_idx;    // int32 (in)
  GptqOptions options;
};

// ConfigError unless bits is 2, 4 or 8 and group_size is -1 or positive.
void validate_gptq_options(const GptqOptions& o, const std::string& component);
// Number of groups of a layer with `in` inputs.
int64_t gptq_groups(const GptqOptions& o, int64_t in);
// Checks every tensor of `q` against a layer of shape (out, in): dtypes, shapes, one device, g_idx
// within [0, groups). FormatError / ShapeMismatchError naming the tensor (`prefix` + its name) and
// `file`.
void validate_gptq(const QuantizedGptq& q, int64_t out, int64_t in, const std::string& prefix,
                   const std::string& file);

// The integer codes q, int32 (in, out), and the real zero points, int32 (groups, out) (v1: the
// stored values plus one, added word-wise as GPTQModel does). Reference implementations (ATen
// ops), used by tests and the device-generic decode.
at::Tensor gptq_unpack_codes(const QuantizedGptq& q);
at::Tensor gptq_unpack_zeros(const QuantizedGptq& q);
// The dequantized (out, in) weight in `dtype` (the formula above).
at::Tensor gptq_dequantize(const QuantizedGptq& q, at::ScalarType dtype);

// Takes the GPTQ tensors of the layer whose weight key would be `prefix + "weight"` out of
// `tensors` (`qweight`, `qzeros`, `scales`, `g_idx`; the bias stays) and checks them against the
// layer's (out, in) `shape`; nullopt when `prefix + "qweight"` is absent. Errors name `file`.
std::optional<QuantizedGptq> take_gptq_tensors(std::map<std::string, at::Tensor>& tensors,
                                               const std::string& prefix,
                                               const std::vector<int64_t>& shape,
                                               const GptqOptions& options, const std::string& file);

// The checkpoint entries of a layer (`prefix` + qweight / qzeros / scales / g_idx).
std::vector<std::pair<std::string, at::Tensor>> gptq_state_dict(const QuantizedGptq& q,
                                                                const std::string& prefix);

}  // namespace peft::quant
