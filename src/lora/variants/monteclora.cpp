// MonteCLoRA: while training, lora_A is perturbed by a mixture of num_samples Gaussian noise
// matrices whose covariance is a Wishart sample scaled by the learnt std_prior, mixed with
// softmax ("Dirichlet") weights around the learnt expert_weights_prior; a KL + entropy regulariser
// (peft/lora/variants/monteclora.h) keeps the priors close to their references. In eval mode and
// when merging it is plain LoRA. PEFT counterparts: MontecloraLinearVariant (variants.py),
// MontecloraSampler and BufferedMontecloraSampler (monteclora.py), LoraModel._get_monteclora_loss.
#include "peft/lora/variants/monteclora.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/adapter_dict.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn {
namespace variants {
namespace {

constexpr const char* kSamplerKey = "lora_monteclora_sampler";

// One adapter's sampler: the trainable priors and the last training forward's covariance and
// expert weights (buffers, saved).
class SamplerImpl : public torch::nn::Module {
 public:
  SamplerImpl(int64_t r, const MontecloraConfig& c, const at::TensorOptions& opts) : config(c) {
    // PEFT's constructor order (the random draws): std_prior, then expert_weights_prior.
    std_prior = register_parameter("std_prior", torch::rand({r}, opts));
    expert_weights_prior =
        register_parameter("expert_weights_prior", torch::rand({c.num_samples}, opts));
    gaussian_var_prior = register_buffer("gaussian_var_prior", torch::eye(r, opts));
    expert_weights = register_buffer(
        "expert_weights", torch::ones({c.num_samples}, opts) / static_cast<double>(c.num_samples));
  }
  MontecloraConfig config;
  at::Tensor std_prior, expert_weights_prior, gaussian_var_prior, expert_weights;
  // The last training forward's values with their graph (PEFT assigns them to the buffers); the
  // regulariser differentiates through them.
  at::Tensor last_gaussian_var, last_expert_weights;
};

// One Wishart(df = r, scale = I) draw by Bartlett's decomposition, as torch.distributions does:
// chi-square diagonal (df - k degrees), standard normal below it; W = N N^T.
at::Tensor wishart_identity_sample(int64_t r, const at::TensorOptions& opts) {
  at::Tensor df = torch::full({r}, static_cast<double>(r), opts) - torch::arange(r, opts);
  at::Tensor chi2 = at::_standard_gamma(df / 2.0) / 0.5;
  chi2.clamp_min_(std::numeric_limits<float>::min());
  at::Tensor N = at::diag_embed(chi2.sqrt().clamp_min(std::numeric_limits<float>::epsilon()));
  if (r > 1) {
    at::Tensor idx = torch::tril_indices(r, r, -1, opts.dtype(at::kLong));
    N.index_put_({idx[0], idx[1]}, torch::randn({r * (r - 1) / 2}, opts));
  }
  return at::matmul(N, N.t());
}

class MontecloraVariant final : public LoraVariant {
 public:
  explicit MontecloraVariant(MontecloraConfig config) : config_(std::move(config)) {}
  const char* name() const override { return "MonteCLoRA"; }

  void init(LoraLayerImpl& layer, const std::string& adapter) override {
    const at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight");
    auto sampler =
        std::make_shared<SamplerImpl>(A.size(0), config_, A.options().requires_grad(false));
    layer.adapter_dict(kSamplerKey).insert(adapter, sampler);
  }

  void remove(LoraLayerImpl& layer, const std::string& adapter) override {
    layer.adapter_dict(kSamplerKey).erase(adapter);
  }

  void append_tensors(const LoraLayerImpl& layer, const std::string& adapter,
                      std::vector<std::pair<std::string, at::Tensor>>& out) const override {
    const auto s = sampler(layer, adapter);
    if (!s) return;
    const std::string p = std::string(kSamplerKey) + ".";
    out.emplace_back(p + "std_prior", s->std_prior);
    out.emplace_back(p + "expert_weights_prior", s->expert_weights_prior);
    out.emplace_back(p + "gaussian_var_prior", s->gaussian_var_prior);
    out.emplace_back(p + "expert_weights", s->expert_weights);
  }

  bool keeps_frozen(const std::string& key) const override {
    const std::string p = std::string(kSamplerKey) + ".";
    return key == p + "gaussian_var_prior" || key == p + "expert_weights";
  }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    if (!layer.is_training()) return layer.add_plain_output(std::move(result), x, adapter);
    const at::Tensor xin = layer.lora_dropout(x, adapter);
    const at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight");  // (r, in)
    at::Tensor A_eff = A;
    auto [noise, weights] = sample(*sampler(layer, adapter), A.size(1));
    if (at::isnan(noise).any().item<bool>() || at::isnan(weights).any().item<bool>()) {
      warn("monteclora", "Monteclora sampling produced NaNs, using base weights.");
    } else {
      // A + (sum_e w_e eps_e)^T: the weighted mean of the n perturbed copies of A^T.
      const at::Tensor perturbed = A.t().unsqueeze(0) + at::nan_to_num(noise, 0.0);
      A_eff = at::einsum("n,nij->ij", {weights, perturbed}).t();
    }
    const at::Tensor h = at::linear(xin, A_eff);
    const at::Tensor B = layer.adapter_tensor(adapter, "lora_B.weight");
    const at::Tensor y = at::linear(h, B, layer.adapter_tensor(adapter, "lora_B.bias"));
    return result + (y * layer.scaling(adapter)).to(result.scalar_type());
  }

  // kl_loss_weight * (KL terms) + [use_entropy] sum w^2 of one sampler (0 in eval mode); PEFT's
  // get_variational_loss, including its sign of the log-Gamma sum in the Dirichlet term.
  at::Tensor variational_loss(const LoraLayerImpl& layer, const std::string& adapter) const {
    const auto s = sampler(layer, adapter);
    if (!s || !s->is_training())
      return at::zeros({}, layer.adapter_tensor(adapter, "lora_A.weight").options());
    const auto& c = s->config;
    const double n = static_cast<double>(c.num_samples);
    const double r = static_cast<double>(s->std_prior.size(0));
    // Dirichlet KL of alpha2 = exp(expert_weights_prior) from alpha1 = dirichlet_prior.
    const at::Tensor a2 = at::exp(s->expert_weights_prior);
    const at::Tensor a1 = at::full_like(a2, c.dirichlet_prior);
    auto gamma = [](const at::Tensor& t) { return at::exp(at::lgamma(t)); };
    const at::Tensor kl1 = at::log(gamma(a2.sum()) / gamma(a1.sum())) +
                           at::log(gamma(a2) / gamma(a1)).sum() +
                           ((a2 - a1) * (at::digamma(a2) - at::digamma(a2.sum()))).sum();
    // Wishart KL of diag(exp(std_prior))^2: 0.5 (-r tr log V + r tr V - r^2), V diagonal.
    const at::Tensor v = at::exp(2.0 * s->std_prior);
    const at::Tensor kl2 = 0.5 * (-at::log(v).sum() * r + v.sum() * r - r * r);
    // Gaussian KL of the last covariance: 0.5 n (tr V - tr log V - r), V clamped at 1e-6.
    const at::Tensor var =
        s->last_gaussian_var.defined() ? s->last_gaussian_var : s->gaussian_var_prior;
    const at::Tensor d = at::clamp_min(var, 1e-6).diagonal();
    const at::Tensor kl3 = n * 0.5 * (d.sum() - at::log(d).sum() - r);
    at::Tensor loss = c.kl_loss_weight * (kl1 + kl2 + kl3);
    if (c.use_entropy) {
      const at::Tensor w =
          s->last_expert_weights.defined() ? s->last_expert_weights : s->expert_weights;
      loss = loss + (w * w).sum();
    }
    return loss;
  }

 private:
  static std::shared_ptr<SamplerImpl> sampler(const LoraLayerImpl& layer,
                                              const std::string& adapter) {
    const auto* d = layer.find_adapter_dict(kSamplerKey);
    return d && d->contains(adapter) ? d->get<SamplerImpl>(adapter) : nullptr;
  }

  // PEFT MontecloraSampler.forward: (noise (n, in, r), expert weights (n)). Divergence from PEFT:
  // the standard normal and Wishart draws are made here, when used, instead of buffer_size forwards
  // ahead (PEFT keeps buffer_size * n * in * r floats per layer: 315 MB for in = 4096, r = 16 with
  // the defaults); same distributions, another order of random draws.
  static std::pair<at::Tensor, at::Tensor> sample(SamplerImpl& s, int64_t in) {
    const auto& c = s.config;
    const int64_t r = s.std_prior.size(0);
    const int64_t n = c.num_samples;
    const auto opts = s.std_prior.options().requires_grad(false);
    at::Tensor z_mvn, z_dir, z_wishart;
    {
      torch::NoGradGuard no_grad;
      z_mvn = torch::randn({n, in, r}, opts);
      z_dir = torch::randn({n}, opts);
      z_wishart = wishart_identity_sample(r, opts);
    }
    // Wishart reparameterisation: diag(clip(diag(S W S^T), 1e-3)), S = diag(exp(std_prior)).
    const at::Tensor S = at::diag(at::exp(s.std_prior));
    const at::Tensor updated = at::matmul(at::matmul(S, z_wishart), S.t());
    const at::Tensor gaussian_var = at::diag(at::clamp_min(updated.diagonal(), 1e-3));
    // Multivariate normal reparameterisation with the Cholesky factor of that covariance.
    const at::Tensor L =
        at::linalg_cholesky(gaussian_var.to(at::kFloat)).to(gaussian_var.scalar_type());
    const at::Tensor varsum = at::nan_to_num(at::einsum("eio,op->eip", {z_mvn, L}), 1e-3);
    const at::Tensor noise = c.sample_scaler * varsum;
    // Dirichlet (logistic-normal) reparameterisation around alpha = exp(expert_weights_prior).
    const at::Tensor alpha = at::clamp_min(at::exp(s.expert_weights_prior), 1e-6);
    const at::Tensor mu = at::log(alpha) - at::log(alpha).mean();
    const double nn = static_cast<double>(n);
    const at::Tensor diag_term =
        at::clamp_min(1.0 / alpha * (1.0 - 2.0 / nn) + 1.0 / (nn * nn) * (1.0 / alpha).sum(), 1e-6);
    const at::Tensor sigma = at::diag(diag_term) + 1e-6 * torch::eye(n, opts);
    const at::Tensor Ld = at::linalg_cholesky(sigma.to(at::kFloat)).to(sigma.scalar_type());
    const at::Tensor weights = at::softmax(at::matmul(Ld, z_dir) + mu, -1);
    s.last_gaussian_var = gaussian_var;
    s.last_expert_weights = weights;
    {
      torch::NoGradGuard no_grad;
      s.gaussian_var_prior.copy_(gaussian_var.detach());
      s.expert_weights.copy_(weights.detach());
    }
    return {noise, weights};
  }

  MontecloraConfig config_;
};

}  // namespace

std::shared_ptr<LoraVariant> make_monteclora_variant(const LoraLayerImpl& layer,
                                                     const AdapterSettings& settings) {
  PEFT_CHECK(layer.is_linear() && !layer.is_quantized(), ConfigError, "lora",
             "Invalid or unsupported variant combination: ('monteclora_config',) for a "
                 << (layer.is_quantized() ? "quantized " : "") << to_string(layer.kind())
                 << " layer (hint: MonteCLoRA applies to Linear and GPT-2 Conv1D layers; PEFT "
                    "silently trains plain LoRA elsewhere)");
  return std::make_shared<MontecloraVariant>(*settings.monteclora_config);
}

}  // namespace variants

at::Tensor monteclora_loss(torch::nn::Module& model, const std::vector<std::string>& adapters) {
  at::Tensor sum;
  int64_t count = 0;
  for (auto& [name, layer] : lora_layers(model)) {
    for (const auto& a : adapters) {
      const auto v = std::dynamic_pointer_cast<variants::MontecloraVariant>(layer->variant(a));
      if (!v) continue;
      const at::Tensor l = v->variational_loss(*layer, a);
      sum = sum.defined() ? sum + l : l;
      ++count;
    }
  }
  return count ? sum / static_cast<double>(count) : at::Tensor();
}

}  // namespace peft::nn
