// LoRA on raw parameters (target_parameters), e.g. the fused 3-D expert weights of
// mixture-of-experts layers. PEFT counterpart: lora.ParamWrapper (tuners/lora/layer.py), which
// parametrizes the owner's nn.Parameter.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "peft/lora/layer.h"

namespace peft::nn {

// The LoRA of one parameter P of a ParamModule. Its base "weight" IS P (one TensorImpl), so merging
// writes P. Shapes (PEFT): 2-D P (out, in): A (r, in), B (out, r), dP = s B A. 3-D P (E, d1, d2),
// expert dimension first: in = d2, out = d1 (in = d1, out = d2 when the owner is_transposed); A (r
// E, in) with A_e = A.reshape(E, r, in)[e] (expert-major rows), B (out, r E) with B_e =
// B.reshape(out, r, E)[:, :, e] (rank-major columns); dP[e] = s B_e A_e (transposed when
// is_transposed). Rank and alpha are per expert.
class ParamLoraImpl : public LoraLayerImpl {
 public:
  ParamLoraImpl(at::Tensor parameter, std::string parameter_name, bool is_transposed);
  const std::string& parameter_name() const { return parameter_name_; }
  int64_t num_experts() const { return experts_; }
  bool is_3d() const { return three_d_; }
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  // Delta in the parameter's shape and dtype.
  at::Tensor lora_delta_weight(const std::string& adapter) const override;
  // Never used (the owner reads effective() / expert_factors()); they throw UnsupportedError.
  at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias) const override;
  at::Tensor lora_forward(const at::Tensor& x, const std::string& adapter) const override;
  // P + the delta of every active, unmerged adapter (P itself when adapters are disabled): what
  // PEFT's parametrization hands to the owner's forward.
  at::Tensor effective() const;
  // Per expert (0 for a 2-D parameter): the factors of every active, unmerged adapter, A_e (r, in),
  // B_e (out, r), so that the owner can add s * (x A_e^T) B_e^T for the tokens routed to e only.
  struct ExpertFactors {
    at::Tensor A;
    at::Tensor B;
    double scaling = 1.0;
  };
  std::vector<ExpertFactors> expert_factors(int64_t expert) const;
  // True when forward has a LoRA contribution to add (some active adapter, enabled, not merged).
  bool has_active_lora() const;
  // Number of "base_layer." segments in PEFT's checkpoint keys for this parameter: PEFT nests one
  // ParamWrapper per targeted parameter of a module, the first targeted parameter innermost.
  int nesting() const { return nesting_; }
  void set_nesting(int n) { nesting_ = n; }

 protected:
  void create_adapter(const std::string& adapter, const AdapterSettings& settings) override;
  void destroy_adapter(const std::string& adapter) override;
  at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                const std::string& adapter) const override;

 private:
  std::vector<std::string> live_adapters() const;  // active, unmerged, enabled
  std::string parameter_name_;
  bool three_d_ = false;
  bool transposed_ = false;
  int64_t experts_ = 1;
  int64_t in_ = 0, out_ = 0;
  int nesting_ = 0;
};
TORCH_MODULE(ParamLora);

// Base class of modules whose own raw parameters can be LoRA targets (target_parameters): register
// them with register_parameter as usual and read them in forward through param(name), which adds
// the LoRA of the active adapters. A module holding raw parameters that does not derive from
// ParamModuleImpl cannot be targeted (LibTorch cannot reparametrize a parameter under a running
// forward).
class ParamModuleImpl : public torch::nn::Module {
 public:
  explicit ParamModuleImpl(std::string name = "ParamModule") : torch::nn::Module(std::move(name)) {}
  // P with its LoRA (ParamLoraImpl::effective) when targeted, else P.
  at::Tensor param(const std::string& name) const;
  // The LoRA slot of parameter `name`; null when it is not targeted.
  std::shared_ptr<ParamLoraImpl> param_lora(const std::string& name) const;
  // Creates the slot once (registered as child "lora_param_<name>"); ConfigError when `name` is not
  // one of the module's own parameters.
  std::shared_ptr<ParamLoraImpl> attach_param_lora(const std::string& name);
  // Removes the slot (after unload); the parameter keeps its current values.
  void detach_param_lora(const std::string& name);
  std::vector<std::string> targeted_parameters() const;
  // PEFT's `is_transposed` attribute: 3-D parameters are stored (E, in, out) instead of (E, out,
  // in).
  bool is_transposed = false;
  // Mixture-of-experts owners: true = add each expert's LoRA only for the tokens routed to it;
  // false = add the full delta of every expert to the weights first (PEFT's behaviour). Same
  // numbers; routed-only is cheaper when few experts are hit (decoding).
  bool routed_lora = true;

 private:
  std::map<std::string, std::shared_ptr<ParamLoraImpl>> slots_;
};

}  // namespace peft::nn
