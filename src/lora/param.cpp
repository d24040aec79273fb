// LoRA on raw parameters (target_parameters): PEFT's ParamWrapper math with PEFT's factor layouts,
// and the ParamModule base whose forward reads its parameters through param().
#include "peft/lora/param.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>

#include "init_weights.h"
#include "peft/error.h"

namespace peft::nn {

ParamLoraImpl::ParamLoraImpl(at::Tensor parameter, std::string parameter_name, bool is_transposed)
    : LoraLayerImpl(LayerKind::kParam),
      parameter_name_(std::move(parameter_name)),
      transposed_(is_transposed) {
  PEFT_CHECK(
      parameter.defined() && (parameter.dim() == 2 || parameter.dim() == 3), UnsupportedError,
      "target_parameters",
      "parameter \""
          << parameter_name_ << "\" has " << (parameter.defined() ? parameter.dim() : 0)
          << " dimensions; LoRA targets 2-D parameters and 3-D expert parameters (expert dimension "
             "first) only");
  three_d_ = parameter.dim() == 3;
  if (three_d_) {
    experts_ = parameter.size(0);
    // PEFT ParamWrapper._get_in_out_features: without is_transposed, in = d2 and out = d1.
    in_ = transposed_ ? parameter.size(1) : parameter.size(2);
    out_ = transposed_ ? parameter.size(2) : parameter.size(1);
  } else {
    in_ = parameter.size(1);
    out_ = parameter.size(0);
  }
  const bool grad = parameter.requires_grad();
  register_base(parameter, at::Tensor());
  weight().set_requires_grad(grad);
}

void ParamLoraImpl::create_adapter(const std::string& adapter, const AdapterSettings& s) {
  const std::string where = "parameter \"" + parameter_name_ + "\"";
  PEFT_CHECK(s.lora_dropout == 0.0, ConfigError, "target_parameters",
             "lora.ParamWrapper does not work with lora_dropout != 0 ("
                 << where << ", lora_dropout=" << s.lora_dropout << ")");
  PEFT_CHECK(!s.lora_bias, ConfigError, "target_parameters",
             "lora.ParamWrapper does not work with lora_bias=True (" << where << ")");
  using K = InitLoraWeights::Kind;
  const auto k = s.init_lora_weights.kind;
  PEFT_CHECK(k == K::kTrue || k == K::kFalse || k == K::kGaussian, ConfigError, "target_parameters",
             "Unknown initialization init_lora_weights="
                 << to_string(s.init_lora_weights) << " for " << where
                 << " (hint: parameters support True, False and "
                    "\"gaussian\")");
  // A: nn.Linear(in, r E), B: nn.Linear(r E, out) in PEFT; the linear-like init applies to them as
  // to a Linear.
  add_factors(adapter, s, {s.r * experts_, in_}, {out_, s.r * experts_});
}

void ParamLoraImpl::destroy_adapter(const std::string& adapter) { remove_factors(adapter); }

at::Tensor ParamLoraImpl::base_forward(const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&) const {
  throw UnsupportedError("target_parameters",
                         "the LoRA of parameter \"" + parameter_name_ +
                             "\" has no forward of its own (hint: the owning module reads "
                             "param(\"" +
                             parameter_name_ + "\"))");
}

at::Tensor ParamLoraImpl::lora_forward(const at::Tensor&, const std::string&) const {
  throw UnsupportedError("target_parameters",
                         "the LoRA of parameter \"" + parameter_name_ +
                             "\" has no forward of its own (hint: the owning module reads "
                             "param(\"" +
                             parameter_name_ + "\"))");
}

at::Tensor ParamLoraImpl::add_adapter_output(at::Tensor, const at::Tensor&,
                                             const std::string&) const {
  throw UnsupportedError("target_parameters",
                         "parameter \"" + parameter_name_ +
                             "\": mixed adapter batches are not supported with "
                             "target_parameters (PEFT neither)");
}

at::Tensor ParamLoraImpl::lora_delta_weight(const std::string& adapter) const {
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r E, in)
  const auto& B = lora_B_->get<FactorImpl>(adapter)->weight;  // (out, r E)
  const auto dtype = A.scalar_type();
  const bool upcast = A.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
  at::Tensor a = upcast ? A.detach().to(at::kFloat) : A.detach();
  at::Tensor b = upcast ? B.detach().to(at::kFloat) : B.detach();
  at::Tensor delta;
  if (!three_d_) {
    delta = at::matmul(b, a) * scaling(adapter);
  } else {
    const int64_t r = adapter_settings(adapter).r;
    at::Tensor A3 = a.reshape({experts_, r, in_});                      // [e, k, i]
    at::Tensor B3 = b.reshape({out_, r, experts_}).permute({2, 0, 1});  // [e, o, k]
    delta = at::bmm(B3, A3) * scaling(adapter);                         // [e, o, i]
    if (transposed_) delta = delta.transpose(1, 2).contiguous();        // stored (E, in, out)
  }
  return delta.to(weight().scalar_type());
}

std::vector<std::string> ParamLoraImpl::live_adapters() const {
  std::vector<std::string> out;
  if (!adapters_enabled()) return out;
  for (const auto& a : active_adapters()) {
    if (!has_adapter(a)) continue;
    const auto& m = merged_adapters();
    if (std::find(m.begin(), m.end(), a) != m.end()) continue;
    out.push_back(a);
  }
  return out;
}

bool ParamLoraImpl::has_active_lora() const { return !live_adapters().empty(); }

at::Tensor ParamLoraImpl::effective() const {
  const auto live = live_adapters();
  if (live.empty()) return weight();
  // PEFT's parametrization: P + sum of the deltas, computed with autograd so the factors train.
  // Computed here directly (get_delta_weight detaches).
  at::Tensor out = weight();
  for (const auto& a : live) {
    const auto& A = lora_A_->get<FactorImpl>(a)->weight;
    const auto& B = lora_B_->get<FactorImpl>(a)->weight;
    at::Tensor delta;
    if (!three_d_) {
      delta = at::matmul(B, A) * scaling(a);
    } else {
      const int64_t r = adapter_settings(a).r;
      delta = at::bmm(B.reshape({out_, r, experts_}).permute({2, 0, 1}),
                      A.reshape({experts_, r, in_})) *
              scaling(a);
      if (transposed_) delta = delta.transpose(1, 2);
    }
    out = out + delta.to(out.scalar_type());
  }
  return out;
}

std::vector<ParamLoraImpl::ExpertFactors> ParamLoraImpl::expert_factors(int64_t expert) const {
  PEFT_CHECK(expert >= 0 && expert < experts_, Error, "target_parameters",
             "expert " << expert << " out of range for parameter \"" << parameter_name_
                       << "\" with " << experts_ << " experts");
  std::vector<ExpertFactors> out;
  for (const auto& a : live_adapters()) {
    const auto& A = lora_A_->get<FactorImpl>(a)->weight;
    const auto& B = lora_B_->get<FactorImpl>(a)->weight;
    const int64_t r = adapter_settings(a).r;
    if (!three_d_) {
      out.push_back({A, B, scaling(a)});
    } else {
      // A_e = A.reshape(E, r, in)[e]: rows e r .. e r + r - 1. B_e = B.reshape(out, r, E)[:, :, e].
      out.push_back({A.narrow(0, expert * r, r), B.reshape({out_, r, experts_}).select(2, expert),
                     scaling(a)});
    }
  }
  return out;
}

// ---- ParamModuleImpl ----

at::Tensor ParamModuleImpl::param(const std::string& name) const {
  auto it = slots_.find(name);
  if (it != slots_.end()) return it->second->effective();
  // named_parameters returns its dict by value: keep it alive while reading from it.
  const auto params = named_parameters(/*recurse=*/false);
  const at::Tensor* p = params.find(name);
  PEFT_CHECK(p != nullptr, Error, this->name(), "no parameter named \"" << name << "\"");
  return *p;
}

std::shared_ptr<ParamLoraImpl> ParamModuleImpl::param_lora(const std::string& name) const {
  auto it = slots_.find(name);
  return it == slots_.end() ? nullptr : it->second;
}

std::shared_ptr<ParamLoraImpl> ParamModuleImpl::attach_param_lora(const std::string& name) {
  if (auto s = param_lora(name)) return s;
  const auto params = named_parameters(/*recurse=*/false);
  const at::Tensor* p = params.find(name);
  PEFT_CHECK(p != nullptr, ConfigError, "target_parameters",
             "module " << this->name() << " has no parameter \"" << name << "\" of its own");
  auto slot = std::make_shared<ParamLoraImpl>(*p, name, is_transposed);
  register_module("lora_param_" + name, slot);
  slots_[name] = slot;
  return slot;
}

void ParamModuleImpl::detach_param_lora(const std::string& name) {
  if (!slots_.count(name)) return;
  unregister_module("lora_param_" + name);
  slots_.erase(name);
}

std::vector<std::string> ParamModuleImpl::targeted_parameters() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : slots_) out.push_back(k);
  return out;
}

}  // namespace peft::nn
