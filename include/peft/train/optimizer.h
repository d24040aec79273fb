// Optimizers for adapter training with PyTorch's and PEFT's exact update rules: AdamW
// (torch.optim.AdamW), LoRA+ parameter groups (peft.optimizers.create_loraplus_optimizer) and
// LoRA-FA (create_lorafa_optimizer). State (moments, step counts) can be saved and restored for
// bit-exact resume.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace peft {
class PeftModel;
}

namespace peft::train {

struct NamedParameter {
  std::string name;  // named_parameters() name of the model the optimizer was made for
  at::Tensor param;
};

// One torch.optim param group. `initial_lr` is the lr the schedule scales (LambdaLR's base_lrs).
struct ParamGroup {
  std::string name;  // "default", or LoRA+'s "groupA" / "embedding" / "groupB" / "groupB_no_decay"
  std::vector<NamedParameter> params;
  double lr = 1e-3;
  double initial_lr = 1e-3;
  double weight_decay = 0.0;
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // torch.optim.AdamW's default
};

enum class OptimizerKind { kAdamW, kLoraPlus, kLoraFa };
// "adamw" | "loraplus" | "lorafa"; ConfigError listing the accepted spellings otherwise.
OptimizerKind parse_optimizer_kind(const std::string& text);
std::string to_string(OptimizerKind kind);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update from the parameters' .grad (parameters without a gradient are skipped, as in
  // PyTorch).
  virtual void step() = 0;
  virtual OptimizerKind kind() const = 0;
  // Sets every gradient to undefined (PyTorch 2.x zero_grad(set_to_none=True)).
  void zero_grad();
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // Every parameter with requires_grad in the groups, in group order.
  std::vector<at::Tensor> parameters() const;
  // Optimizer state as tensors keyed "<param name>/<state>" (exp_avg, exp_avg_sq, step), plus
  // "<group>/lr".
  std::vector<std::pair<std::string, at::Tensor>> state_dict() const;
  // Restores a state_dict() of an optimizer built the same way; FormatError naming the first
  // missing or mis-shaped entry otherwise.
  void load_state_dict(const std::map<std::string, at::Tensor>& state, const std::string& where);

 protected:
  explicit Optimizer(std::vector<ParamGroup> groups);
  struct ParamState {
    at::Tensor exp_avg;
    at::Tensor exp_avg_sq;
    int64_t step = 0;
  };
  // Keyed by parameter name.
  std::map<std::string, ParamState> state_;
  std::vector<ParamGroup> groups_;
};

// torch.optim.AdamW (non-fused, single-tensor; decoupled weight decay before the update).
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options);
  void step() override;
  OptimizerKind kind() const override { return OptimizerKind::kAdamW; }
  const AdamWOptions& options() const { return options_; }

 protected:
  AdamWOptions options_;
};

// PEFT's LoraFAOptimizer: transformers' AdamW variant (bias correction folded into the step size,
// weight decay after the update) where each lora_B gradient is first projected as g_B <- (1/s^2)
// g_B (A A^T + 1e-8 I)^+ (s = the layer's scaling, product computed in bfloat16 as PEFT does under
// autocast); lora_A is frozen.
class LoraFaOptimizer : public Optimizer {
 public:
  struct Pair {
    std::string a_name, b_name;
    at::Tensor a, b;
    double scaling = 1.0;
  };
  LoraFaOptimizer(std::vector<ParamGroup> groups, std::vector<Pair> pairs,
                  const AdamWOptions& options);
  void step() override;
  OptimizerKind kind() const override { return OptimizerKind::kLoraFa; }

 private:
  std::vector<Pair> pairs_;
  AdamWOptions options_;
};

// The trainable parameters of `module` (requires_grad), named as in named_parameters().
std::vector<NamedParameter> trainable_parameters(const torch::nn::Module& module);

// One group with every trainable parameter (torch.optim.AdamW(model.parameters(), ...)).
std::unique_ptr<Optimizer> create_adamw_optimizer(const torch::nn::Module& model,
                                                  const AdamWOptions& options);

struct LoraPlusOptions {
  double loraplus_lr_ratio = 16.0;      // lr of B (and 1-D params) = lr x ratio
  double loraplus_lr_embedding = 1e-6;  // lr of LoRA embedding factors
};
// create_loraplus_optimizer(model, AdamW, lr=options.lr, loraplus_lr_ratio, loraplus_weight_decay =
// options.weight_decay, loraplus_lr_embedding): groups groupA, embedding, groupB, groupB_no_decay
// in PEFT's order (empty groups are kept so that group indices match PEFT's).
std::unique_ptr<Optimizer> create_loraplus_optimizer(const torch::nn::Module& model,
                                                     const AdamWOptions& options,
                                                     const LoraPlusOptions& plus = {});

// create_lorafa_optimizer: freezes every lora_A (requires_grad = false) of the active adapter and
// returns a LoraFaOptimizer over the rest; each pair's scaling is the layer's scaling for the
// adapter (so rank and alpha patterns apply, as PEFT 0.20 does). AdamWOptions defaults to PEFT's:
// eps 1e-6 is LoraFAOptimizer's default, weight decay 0.
std::unique_ptr<Optimizer> create_lorafa_optimizer(PeftModel& model, const AdamWOptions& options);

// torch.nn.utils.clip_grad_norm_(params, max_norm): the total 2-norm of all gradients (before
// clipping); when it exceeds max_norm every gradient is scaled by max_norm / (total + 1e-6).
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace peft::train
