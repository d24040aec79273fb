// MonteCLoRA (PEFT 0.20's MontecloraLinearVariant / MontecloraSampler): plain LoRA in eval mode and
// when merging, a perturbed lora_A while training, the regulariser against a hand computation and
// its gradient into the priors, the sampler saved under PEFT's keys.
#include "peft/lora/variants/monteclora.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::test::compare;

namespace {

peft::LoraConfig mc_config(bool use_entropy = false) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  c.monteclora_config = peft::MontecloraConfig{.num_samples = 3, .use_entropy = use_entropy};
  return c;
}

TEST(Monteclora, EvalAndMergeArePlainLoraTrainingPerturbsA) {
  torch::manual_seed(0);
  peft::test::MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), mc_config());
  const at::Tensor x = torch::randn({5, 10});
  auto& l0 = *mlp->lin0;
  const at::Tensor A = l0.adapter_tensor("default", "lora_A.weight").detach();
  const at::Tensor B = l0.adapter_tensor("default", "lora_B.weight").detach();
  mlp->eval();
  torch::NoGradGuard g;
  const at::Tensor plain = at::linear(x, l0.weight(), l0.bias()) +
                           at::matmul(at::matmul(x, A.t()), B.t()) * l0.scaling("default");
  EXPECT_EQ(compare(l0.forward_with_adapters(x), plain, 1e-6), "");
  EXPECT_EQ(compare(l0.get_delta_weight("default"), at::matmul(B, A) * 2.0, 1e-6), "");
  l0.train();
  const at::Tensor noisy = l0.forward_with_adapters(x);
  // sample_scaler 1e-4: a small, non-zero perturbation of A.
  const double d = (noisy - plain).abs().max().item<double>();
  EXPECT_GT(d, 0.0);
  EXPECT_LT(d, 1e-2);
  const at::Tensor eval_out = mlp->forward(x);
  mlp->eval();
  const at::Tensor before_merge = mlp->forward(x);
  pm->merge_adapter();
  EXPECT_EQ(compare(mlp->forward(x), before_merge, 1e-5), "");
  (void)eval_out;
}

TEST(Monteclora, RegulariserMatchesAHandComputationAndTrainsThePriors) {
  torch::manual_seed(1);
  peft::test::MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), mc_config(/*use_entropy=*/true));
  // Known priors and buffers on both layers.
  const at::Tensor s = torch::tensor({0.1, -0.2, 0.3, 0.0}, torch::kFloat);
  const at::Tensor p = torch::tensor({0.5, -1.0, 0.25}, torch::kFloat);
  const at::Tensor var = torch::diag(torch::tensor({0.5, 2.0, 1.0, 1e-8}, torch::kFloat));
  const at::Tensor w = torch::tensor({0.2, 0.3, 0.5}, torch::kFloat);
  {
    torch::NoGradGuard g;
    for (auto* l : {mlp->lin0.get(), mlp->lin1.get()}) {
      l->adapter_tensor("default", "lora_monteclora_sampler.std_prior").copy_(s);
      l->adapter_tensor("default", "lora_monteclora_sampler.expert_weights_prior").copy_(p);
      l->adapter_tensor("default", "lora_monteclora_sampler.gaussian_var_prior").copy_(var);
      l->adapter_tensor("default", "lora_monteclora_sampler.expert_weights").copy_(w);
    }
  }
  mlp->train();
  const at::Tensor loss = peft::nn::monteclora_loss(*mlp, {"default"});
  // By hand (double precision), PEFT's formulas: n = 3 samples, r = 4, prior 0.1, weight 1e-5.
  double kl1 = 0, sum_a2 = 0, sum_lg = 0;
  std::vector<double> a2;
  for (int i = 0; i < 3; ++i) a2.push_back(std::exp(p[i].item<double>()));
  for (double a : a2) sum_a2 += a;
  for (double a : a2) sum_lg += std::lgamma(a) - std::lgamma(0.1);
  auto digamma = [](double x) {
    return at::digamma(torch::tensor({x}, torch::kDouble)).item<double>();
  };
  kl1 = std::lgamma(sum_a2) - std::lgamma(0.3) + sum_lg;
  for (double a : a2) kl1 += (a - 0.1) * (digamma(a) - digamma(sum_a2));
  double kl2 = 0;
  for (int i = 0; i < 4; ++i) {
    const double v = std::exp(2 * s[i].item<double>());
    kl2 += 0.5 * 4 * (v - std::log(v));
  }
  kl2 -= 0.5 * 16;
  double kl3 = 0;
  for (double dv : {0.5, 2.0, 1.0, 1e-6}) kl3 += 0.5 * 3 * (dv - std::log(dv) - 1);
  const double entropy = 0.04 + 0.09 + 0.25;
  const double expected = 1e-5 * (kl1 + kl2 + kl3) + entropy;
  EXPECT_NEAR(loss.item<double>(), expected, 1e-6 * std::abs(expected))
      << kl1 << " " << kl2 << " " << kl3;
  // In eval mode the samplers contribute nothing (PEFT returns 0).
  mlp->eval();
  EXPECT_EQ(peft::nn::monteclora_loss(*mlp, {"default"}).item<double>(), 0.0);
  // After a training forward the loss differentiates into both priors.
  mlp->train();
  const at::Tensor out = mlp->forward(torch::randn({4, 10}));
  (out.sum() + peft::nn::monteclora_loss(*mlp, {"default"})).backward();
  auto& l0 = *mlp->lin0;
  EXPECT_TRUE(l0.adapter_tensor("default", "lora_monteclora_sampler.std_prior").grad().defined());
  EXPECT_TRUE(l0.adapter_tensor("default", "lora_monteclora_sampler.expert_weights_prior")
                  .grad()
                  .defined());
  EXPECT_FALSE(
      l0.adapter_tensor("default", "lora_monteclora_sampler.expert_weights").requires_grad());
  // No MonteCLoRA adapter: no term.
  EXPECT_FALSE(peft::nn::monteclora_loss(*mlp, {"other"}).defined());
}

TEST(Monteclora, SamplerSavedUnderPeftsKeysAndLoadedBitIdentical) {
  torch::manual_seed(2);
  peft::test::MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), mc_config());
  mlp->train();
  mlp->forward(torch::randn({3, 10}));  // updates the covariance and expert weights
  std::set<std::string> keys;
  for (auto& [k, v] : pm->get_peft_model_state_dict("default")) keys.insert(k);
  for (const char* t :
       {"std_prior", "expert_weights_prior", "gaussian_var_prior", "expert_weights"})
    EXPECT_TRUE(keys.count(std::string("base_model.model.lin0.lora_monteclora_sampler.") + t)) << t;
  peft::test::TempDir dir;
  pm->save_pretrained(dir.str());
  peft::test::MLP other;
  auto loaded = peft::PeftModel::from_pretrained(other.ptr(), dir.str());
  EXPECT_EQ(peft::test::state_dict_difference(pm->get_peft_model_state_dict("default"),
                                              loaded->get_peft_model_state_dict("default")),
            "");
}

}  // namespace
