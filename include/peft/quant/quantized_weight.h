// A frozen 2-D weight kept quantized in memory (NF4 / FP4 with optional double quantization, or
// LLM.int8 row-wise int8) and the fused dequantise-and-multiply that a quantized Linear runs.
// Counterparts: bitsandbytes' Linear4bit / Params4bit (MatMul4Bit) and Linear8bitLt / Int8Params
// (MatMul8bitLt); and GPTQ checkpoints' packed integer weights (gptq.h), which are only read, never
// made here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "peft/quant/gptq.h"
#include "peft/quant/quantize.h"

namespace peft::quant {

// What `--quantize` selects: bitsandbytes' load_in_4bit (nf4 / fp4) or load_in_8bit; kGPTQ comes
// only from a GPTQ checkpoint (quantizing to GPTQ needs calibration data).
enum class QuantMethod { kNF4, kFP4, kInt8, kGPTQ };
// "nf4" / "fp4" / "int8"; ConfigError listing the three otherwise (to_string also gives "gptq").
QuantMethod parse_quant_method(const std::string& name);
std::string to_string(QuantMethod method);

// transformers' BitsAndBytesConfig, the part that matters on a CPU.
struct QuantizeOptions {
  QuantMethod method = QuantMethod::kNF4;
  int64_t blocksize = 64;       // 4-bit only (bnb_4bit_blocksize; 64..4096)
  bool double_quant = false;    // 4-bit only (bnb_4bit_use_double_quant)
  double int8_threshold = 0.0;  // int8 only (llm_int8_threshold; 0 = no outlier decomposition)
  // Dtype the forward computes in and dequantize() returns (bnb_4bit_compute_dtype); nullopt = the
  // dtype of the weight that was quantized.
  std::optional<at::ScalarType> compute_dtype;
};

class QuantizedWeight {
 public:
  // W: (out, in) float32 / bfloat16 / float16 on any device.
  static std::shared_ptr<QuantizedWeight> quantize(const at::Tensor& W,
                                                   const QuantizeOptions& options);
  // Wraps already quantized data (a bitsandbytes checkpoint). q.shape must be 2-D.
  static std::shared_ptr<QuantizedWeight> from_4bit(Quantized4bit q, at::ScalarType compute_dtype);
  static std::shared_ptr<QuantizedWeight> from_int8(QuantizedInt8 q, at::ScalarType compute_dtype,
                                                    double threshold = 0.0);
  // Wraps a GPTQ layer's tensors (checked by validate_gptq; the shape comes from them).
  static std::shared_ptr<QuantizedWeight> from_gptq(QuantizedGptq q, at::ScalarType compute_dtype);

  QuantMethod method() const { return method_; }
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }
  at::ScalarType compute_dtype() const { return compute_dtype_; }
  c10::Device device() const;
  double int8_threshold() const { return threshold_; }
  const Quantized4bit& q4() const;    // method nf4 / fp4
  const QuantizedInt8& q8() const;    // method int8
  const QuantizedGptq& gptq() const;  // method gptq
  // The tensor a quantized Linear's "weight" parameter holds: the 4-bit packed bytes, the int8 CB,
  // or GPTQ's qweight.
  at::Tensor packed_data() const;

  // The full (out, in) weight in compute_dtype (merging, inits, export; not used by forward).
  at::Tensor dequantize() const;
  // Rows [row0, row1) of the dequantized weight in float32 (the kernel's tile).
  at::Tensor dequantize_rows(int64_t row0, int64_t row1) const;

  // y = x W^T + bias for x (..., in), in x's dtype. 4-bit and GPTQ: the weight is dequantized one
  // tile of rows at a time into a small buffer and multiplied (never a full dequantized copy).
  // int8: LLM.int8 (row-wise int8 input quantization, integer product, columns of x with |x| >=
  // threshold computed in float against the dequantized weight). Differentiable with respect to x
  // and bias; the quantized weight is frozen (its backward is grad_x = grad_y W, computed tile-wise
  // the same way).
  at::Tensor linear(const at::Tensor& x, const at::Tensor& bias) const;
  // grad_y (..., out) -> grad_y W (..., in), tile-wise (the backward of linear; public for tests).
  at::Tensor grad_input(const at::Tensor& grad_y) const;

  // Moves the packed data (and statistics) to `device`.
  void to(c10::Device device);
  // Resident bytes of the packed data and its statistics.
  int64_t nbytes() const;

  // bitsandbytes' state-dict entries for a layer whose weight key is `prefix + "weight"`: 4-bit
  // "weight" (packed uint8), "weight.absmax", "weight.quant_map", ["weight.nested_absmax",
  // "weight.nested_quant_map"], "weight.quant_state.bitsandbytes__<nf4|fp4>" (uint8 JSON); int8
  // "weight" (int8) and "SCB".
  std::vector<std::pair<std::string, at::Tensor>> bnb_state_dict(const std::string& prefix) const;

  // Rows per tile of the fused kernel (a multiple that keeps tiles on whole 4-bit blocks when
  // possible).
  int64_t tile_rows() const { return tile_rows_; }

 private:
  friend struct QuantizedWeightTestAccess;  // tests: force small tiles / the ATen decode path
  QuantizedWeight() = default;
  void init_tiles();
  // y = x W^T + bias without autograd (the body of linear()).
  at::Tensor forward_impl(const at::Tensor& x, const at::Tensor& bias) const;
  // 4-bit and GPTQ: tile-wise dequantize and multiply.
  at::Tensor forward_tiled(const at::Tensor& x2d, const at::Tensor& bias) const;
  at::Tensor forward_int8(const at::Tensor& x2d, const at::Tensor& bias) const;
  // Rows [row0, row1) of the dequantized weight in float32, rounded to `round_to` (the operand of a
  // GEMM emulated in bfloat16 / float16). 4-bit and GPTQ on the CPU decode into `buffer` (float32
  // (rows per GEMM, in), contiguous; undefined: allocate) and returns it or its first rows; other
  // cases allocate.
  at::Tensor tile(int64_t row0, int64_t row1, const at::Tensor& buffer,
                  at::ScalarType round_to = at::ScalarType::Float) const;
  bool use_cpu_decode() const;
  // Calls f(row0, row1, tile) for every `step` rows of the weight: the tile rounded to `round_to`,
  // then in `mm` (the GEMM dtype). On the CPU 4-bit tiles are decoded into one reused buffer.
  void for_each_tile(
      int64_t step, at::ScalarType round_to, at::ScalarType mm,
      const std::function<void(int64_t row0, int64_t row1, const at::Tensor& tile)>& f) const;
  QuantMethod method_ = QuantMethod::kNF4;
  int64_t out_ = 0, in_ = 0;
  at::ScalarType compute_dtype_ = at::ScalarType::Float;
  double threshold_ = 0.0;
  std::optional<Quantized4bit> q4_;
  std::optional<QuantizedInt8> q8_;
  std::optional<QuantizedGptq> gptq_;
  // GPTQ: the real zero points and the scales (in the compute dtype) as float32 (groups, out).
  at::Tensor gptq_zeros_, gptq_scales_;
  // GPTQ tiles on the CPU.
  void decode_gptq_cpu(int64_t row0, int64_t row1, float* dst) const;
  at::Tensor
      absmax_f32_;   // 4-bit: the float32 absmax (undefined with double quantization: per tile)
  at::Tensor code_;  // 4-bit: the 16 code values (float32) on the data's device
  int64_t tile_rows_ = 64;
  bool force_aten_decode_ = false;  // tests: run the device-generic decode on the CPU too
};

// Reads the bitsandbytes entries of one quantized weight (`prefix + "weight"` and its quant-state
// keys, as bnb_state_dict writes them) out of `tensors` (they are erased), or nullopt when `prefix
// + "weight"` is not quantized there. `shape` is the layer's (out, in). FormatError naming `file`
// and the tensor for a malformed or inconsistent entry.
std::optional<std::shared_ptr<QuantizedWeight>> take_bnb_weight(
    std::map<std::string, at::Tensor>& tensors, const std::string& prefix,
    const std::vector<int64_t>& shape, at::ScalarType compute_dtype, const std::string& file);

}  // namespace peft::quant
