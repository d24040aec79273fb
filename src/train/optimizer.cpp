// Optimizer base (state, zero_grad, state dict), torch.optim.AdamW and clip_grad_norm_.
#include "peft/train/optimizer.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>

#include "../strings.h"
#include "peft/error.h"

namespace peft::train {

OptimizerKind parse_optimizer_kind(const std::string& text) {
  if (text == "adamw") return OptimizerKind::kAdamW;
  if (text == "loraplus") return OptimizerKind::kLoraPlus;
  if (text == "lorafa") return OptimizerKind::kLoraFa;
  throw ConfigError("optimizer",
                    "unknown optimizer \"" + text + "\"; expected one of adamw, loraplus, lorafa");
}

std::string to_string(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdamW:
      return "adamw";
    case OptimizerKind::kLoraPlus:
      return "loraplus";
    case OptimizerKind::kLoraFa:
      return "lorafa";
  }
  return "?";
}

Optimizer::Optimizer(std::vector<ParamGroup> groups) : groups_(std::move(groups)) {
  for (auto& g : groups_) g.initial_lr = g.lr;
}

void Optimizer::zero_grad() {
  for (auto& g : groups_) {
    for (auto& p : g.params) {
      if (p.param.grad().defined()) p.param.mutable_grad() = at::Tensor();
    }
  }
}

std::vector<at::Tensor> Optimizer::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& g : groups_) {
    for (const auto& p : g.params) {
      if (p.param.requires_grad()) out.push_back(p.param);
    }
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> Optimizer::state_dict() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& g : groups_)
    out.emplace_back(g.name + "/lr", torch::tensor({g.lr}, torch::kDouble));
  for (const auto& [name, s] : state_) {
    out.emplace_back(name + "/step", torch::tensor({s.step}, torch::kLong));
    out.emplace_back(name + "/exp_avg", s.exp_avg);
    out.emplace_back(name + "/exp_avg_sq", s.exp_avg_sq);
  }
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, at::Tensor>& state,
                                const std::string& where) {
  auto get = [&](const std::string& key) -> const at::Tensor& {
    auto it = state.find(key);
    if (it == state.end()) {
      throw FormatError(
          "optimizer",
          where + ": missing optimizer state \"" + key +
              "\" (hint: the checkpoint was written for another optimizer or adapter)");
    }
    return it->second;
  };
  for (auto& g : groups_) g.lr = get(g.name + "/lr").item<double>();
  std::map<std::string, at::Tensor> params;
  for (const auto& g : groups_) {
    for (const auto& p : g.params) params[p.name] = p.param;
  }
  state_.clear();
  for (const auto& [key, t] : state) {
    const auto slash = key.rfind('/');
    if (slash == std::string::npos || key.substr(slash) != "/step") continue;
    const std::string name = key.substr(0, slash);
    auto it = params.find(name);
    if (it == params.end()) continue;  // a group lr entry or a parameter of another layout
    ParamState s;
    s.step = t.item<int64_t>();
    s.exp_avg = get(name + "/exp_avg");
    s.exp_avg_sq = get(name + "/exp_avg_sq");
    if (!s.exp_avg.sizes().equals(it->second.sizes()) ||
        !s.exp_avg_sq.sizes().equals(it->second.sizes())) {
      throw ShapeMismatchError(
          "optimizer", where + ": state of \"" + name + "\" has shape " +
                           detail::shape_string(s.exp_avg.sizes()) + " but the parameter has " +
                           detail::shape_string(it->second.sizes()) +
                           " (hint: the checkpoint was written for another adapter)");
    }
    s.exp_avg = s.exp_avg.to(it->second.options()).clone();
    s.exp_avg_sq = s.exp_avg_sq.to(it->second.options()).clone();
    state_[name] = std::move(s);
  }
}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& options)
    : Optimizer(std::move(groups)), options_(options) {}

void AdamW::step() {
  torch::NoGradGuard no_grad;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  for (auto& g : groups_) {
    for (auto& np : g.params) {
      at::Tensor& p = np.param;
      const at::Tensor& grad = p.grad();
      if (!grad.defined()) continue;
      ParamState& s = state_[np.name];
      if (!s.exp_avg.defined()) {
        s.exp_avg = torch::zeros_like(p, at::MemoryFormat::Preserve);
        s.exp_avg_sq = torch::zeros_like(p, at::MemoryFormat::Preserve);
      }
      s.step += 1;
      p.mul_(1.0 - g.lr * g.weight_decay);
      s.exp_avg.mul_(beta1).add_(grad, 1.0 - beta1);
      s.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
      const double step = static_cast<double>(s.step);
      const double bias_correction1 = 1.0 - std::pow(beta1, step);
      const double bias_correction2 = 1.0 - std::pow(beta2, step);
      const double step_size = g.lr / bias_correction1;
      const at::Tensor denom =
          (s.exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(options_.eps);
      p.addcdiv_(s.exp_avg, denom, -step_size);
    }
  }
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2));
  }
  if (norms.empty()) return 0.0;
  const at::Tensor total = torch::stack(norms).norm(2);
  const at::Tensor coef = torch::clamp(max_norm / (total + 1e-6), c10::nullopt, 1.0);
  for (const auto& p : params) {
    if (p.grad().defined()) p.mutable_grad().mul_(coef.to(p.grad().device()));
  }
  return total.item<double>();
}

}  // namespace peft::train
