// LoraFAOptimizer (peft/optimizers/lorafa.py): transformers' AdamW variant with lora_B's gradient
// projected through the frozen lora_A.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>
#include <set>

#include "peft/train/optimizer.h"

namespace peft::train {

LoraFaOptimizer::LoraFaOptimizer(std::vector<ParamGroup> groups, std::vector<Pair> pairs,
                                 const AdamWOptions& options)
    : Optimizer(std::move(groups)), pairs_(std::move(pairs)), options_(options) {}

namespace {

// g_B <- (1/s^2) g_B (A A^T + 1e-8 I)^+. PEFT runs the product under bfloat16 autocast whenever
// bf16 is available (always on CPU), so it is computed in bfloat16 here too and cast back to the
// gradient's dtype.
at::Tensor project_b_grad(const at::Tensor& a, const at::Tensor& grad_b, double scaling) {
  // Divergence from PEFT: conv factors are flattened to (r, in*k...) / (out, r); PEFT's A @ A.T
  // fails on them.
  const int64_t r = a.size(0);
  const at::Tensor a2 = a.reshape({r, -1});
  const at::Tensor aat = a2.matmul(a2.t());
  const at::Tensor inv = at::linalg_pinv(aat + 1e-8 * torch::eye(r, aat.options()));
  const at::Tensor g2 = grad_b.reshape({grad_b.size(0), r});
  at::Tensor projected =
      g2.to(at::kBFloat16).matmul(inv.to(at::kBFloat16)).mul(1.0 / (scaling * scaling));
  return projected.to(grad_b.scalar_type()).reshape(grad_b.sizes());
}

}  // namespace

void LoraFaOptimizer::step() {
  torch::NoGradGuard no_grad;
  std::map<std::string, const Pair*> by_b;
  std::set<std::string> a_names;
  for (const auto& p : pairs_) {
    by_b[p.b_name] = &p;
    a_names.insert(p.a_name);
  }
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  for (auto& g : groups_) {
    for (auto& np : g.params) {
      if (a_names.count(np.name)) continue;  // frozen A
      at::Tensor& p = np.param;
      if (!p.grad().defined()) continue;
      auto pair = by_b.find(np.name);
      const at::Tensor grad =
          pair == by_b.end() ? p.grad()
                             : project_b_grad(pair->second->a, p.grad(), pair->second->scaling);
      ParamState& s = state_[np.name];
      if (!s.exp_avg.defined()) {
        s.exp_avg = torch::zeros_like(p, at::MemoryFormat::Preserve);
        s.exp_avg_sq = torch::zeros_like(p, at::MemoryFormat::Preserve);
      }
      s.step += 1;
      s.exp_avg.mul_(beta1).add_(grad, 1.0 - beta1);
      s.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
      const at::Tensor denom = s.exp_avg_sq.sqrt().add_(options_.eps);
      const double step = static_cast<double>(s.step);
      const double step_size =
          g.lr * std::sqrt(1.0 - std::pow(beta2, step)) / (1.0 - std::pow(beta1, step));
      p.addcdiv_(s.exp_avg, denom, -step_size);
      if (g.weight_decay > 0.0) p.add_(p, -g.lr * g.weight_decay);
    }
  }
}

}  // namespace peft::train
