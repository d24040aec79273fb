// Adapter-ready Linear and GPT-2 Conv1D. PEFT counterpart: lora.Linear (tuners/lora/layer.py);
// GPT-2's Conv1D is a Linear whose weight is stored (in, out), i.e. fan_in_fan_out = true.
#pragma once

#include <memory>

#include "peft/lora/layer.h"

namespace peft::quant {
class QuantizedWeight;
struct QuantizeOptions;
}  // namespace peft::quant

namespace peft::nn {

// y = x W^T + b with W: (out, in); LoRA adds scaling * B (A x), A: (r, in), B: (out, r).
class LinearImpl : public LoraLayerImpl {
 public:
  // PyTorch's default init: W ~ kaiming_uniform(a = sqrt(5)), b ~ U(-1/sqrt(in), 1/sqrt(in)).
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  // Weight tying: a bias-free Linear whose "weight" IS `shared_weight` (out, in) (one TensorImpl,
  // like the single nn.Parameter transformers shares between embed_tokens and lm_head), so loading,
  // dtype moves, merging and training update both owners, and parameter counts see it once.
  explicit LinearImpl(const at::Tensor& shared_weight);
  at::Tensor forward(const at::Tensor& x) { return forward_with_adapters(x); }
  int64_t in_features() const override { return in_features_; }
  int64_t out_features() const override { return out_features_; }
  // True for GPT-2 Conv1D: weight stored (in, out).
  bool fan_in_fan_out() const { return fan_in_fan_out_; }
  at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias) const override;
  // scaling * (x A^T) B^T (+ scaling * lora_B.bias).
  at::Tensor lora_forward(const at::Tensor& x, const std::string& adapter) const override;
  // scaling * B A, (out, in) or (in, out) for Conv1D.
  at::Tensor lora_delta_weight(const std::string& adapter) const override;

  // ---- quantized base (QLoRA; bitsandbytes Linear4bit / Linear8bitLt) ----
  // Replaces the float weight by its quantized form: "weight" then holds the packed data (uint8 for
  // 4-bit, int8 for int8, as bitsandbytes' Params4bit / Int8Params) and forward runs the fused
  // dequantise-and-multiply. LoRA adapters stay float and trainable; gradients flow through the
  // frozen weight to the input. Refused for GPT-2 Conv1D, a tied weight, and layers with merged
  // adapters.
  void quantize(const quant::QuantizeOptions& options);
  // Installs an already quantized weight (a bitsandbytes or GPTQ checkpoint); its shape must be
  // (out, in).
  void set_quantized_weight(std::shared_ptr<quant::QuantizedWeight> q);
  // Back to a float weight (compute dtype) holding the dequantized values.
  void dequantize();
  bool is_quantized() const override { return quant_ != nullptr; }
  std::shared_ptr<const quant::QuantizedWeight> quantized_weight() const { return quant_; }
  at::Tensor float_weight() const override;
  // A GPTQ base cannot take merged values (PEFT refuses merging on GPTQ models).
  void check_base_mergeable() const override;
  // Module::to converts every parameter; a quantized weight must keep its packed integers (only the
  // device moves).
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

 protected:
  void commit_float_weight(const at::Tensor& w) override;
  LinearImpl(LayerKind kind, int64_t in_features, int64_t out_features, bool bias,
             bool fan_in_fan_out);
  void create_adapter(const std::string& adapter, const AdapterSettings& settings) override;
  void destroy_adapter(const std::string& adapter) override;
  at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                const std::string& adapter) const override;
  at::Tensor add_mixed_output(at::Tensor result, const at::Tensor& x,
                              const std::vector<AdapterRows>& groups) const override;

 private:
  int64_t in_features_;
  int64_t out_features_;
  bool fan_in_fan_out_;
  std::shared_ptr<quant::QuantizedWeight> quant_;
  std::shared_ptr<quant::QuantizeOptions>
      quant_options_;  // how quant_ was made (commit requantizes alike)
};
TORCH_MODULE(Linear);

// GPT-2's Conv1D (transformers.pytorch_utils.Conv1D): y = x W + b with W: (nx = in, nf = out).
// Init as transformers: W ~ N(0, 0.02), b = 0.
class Conv1DImpl : public LinearImpl {
 public:
  Conv1DImpl(int64_t nf, int64_t nx);
};
TORCH_MODULE(Conv1D);

}  // namespace peft::nn
