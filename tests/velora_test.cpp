// VeLoRA (PEFT 0.20's VeloraLinearVariant / VeloraFunction): forward values are plain LoRA's, the
// projection follows its init_type, lora_A's gradient is the one rebuilt from the compressed
// sub-tokens (checked against a hand computation), lora_B's and the input's are exact, and the
// buffer is saved under PEFT's key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::test::compare;
using peft::test::message_of;

namespace {

peft::nn::AdapterSettings velora_settings(int r, double alpha, int groups, double scale,
                                          const std::string& init_type) {
  peft::nn::AdapterSettings s;
  s.r = r;
  s.lora_alpha = alpha;
  s.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  s.velora_config =
      peft::VeloraConfig{.num_groups = groups, .scale = scale, .init_type = init_type};
  return s;
}

at::Tensor normalized(at::Tensor v) { return v / v.norm(); }

// x (T, in) -> its sub-tokens' projections on e, rebuilt: scale * c[t, g] * e[d], padding dropped.
at::Tensor reconstruct(const at::Tensor& x, const at::Tensor& e, int64_t groups, double scale) {
  const int64_t in = x.size(-1), D = e.size(0);
  at::Tensor padded = at::constant_pad_nd(x, {0, groups * D - in}).reshape({-1, groups, D});
  at::Tensor c = at::einsum("tgd,d->tg", {padded, e});
  return (c.unsqueeze(-1) * e).reshape({x.size(0), -1}).slice(1, 0, in) * scale;
}

TEST(Velora, GradientsAreTheCompressedReconstructionForAAndExactForBAndTheInput) {
  // PEFT's test_velora manual-gradient case: in 16, out 10, r 4, alpha 2, scale 0.5, 4 groups.
  torch::manual_seed(0);
  peft::nn::Linear lin(16, 10, /*bias=*/false);
  lin->update_layer("default", velora_settings(4, 2.0, 4, 0.5, "random"));
  const at::Tensor e = normalized(torch::arange(1, 5, torch::kFloat));
  {
    torch::NoGradGuard g;
    lin->adapter_tensor("default", "lora_velora_embed").copy_(e);
    lin->adapter_tensor("default", "lora_A.weight")
        .copy_(torch::arange(64).reshape({4, 16}) / 100.0);
    lin->adapter_tensor("default", "lora_B.weight")
        .copy_(torch::arange(40).reshape({10, 4}) / 50.0);
  }
  lin->train();
  const at::Tensor x = torch::randn({2, 3, 16}).requires_grad_(true);
  const at::Tensor g = torch::randn({2, 3, 10});
  const at::Tensor y = lin->forward_with_adapters(x);
  (y * g).sum().backward();
  const at::Tensor A = lin->adapter_tensor("default", "lora_A.weight").detach();
  const at::Tensor B = lin->adapter_tensor("default", "lora_B.weight").detach();
  const double scaling = 2.0 / 4;
  const at::Tensor x2 = x.detach().reshape({6, 16});
  const at::Tensor g2 = g.reshape({6, 10});
  // Forward values are plain LoRA's.
  EXPECT_EQ(compare(y.detach(),
                    at::linear(x.detach(), lin->weight()) +
                        at::matmul(at::matmul(x.detach(), A.t()), B.t()) * scaling,
                    1e-5),
            "");
  // A's gradient from the rebuilt activations; B's and the input's exact.
  const at::Tensor grad_A = at::matmul(at::matmul(g2 * scaling, B).t(), reconstruct(x2, e, 4, 0.5));
  const at::Tensor grad_B = at::matmul(g2.t(), at::matmul(x2, A.t())) * scaling;
  EXPECT_EQ(compare(lin->adapter_tensor("default", "lora_A.weight").grad(), grad_A, 1e-5), "");
  EXPECT_EQ(compare(lin->adapter_tensor("default", "lora_B.weight").grad(), grad_B, 1e-5), "");
  const at::Tensor grad_x =
      at::matmul(g, lin->weight()) + at::matmul(at::matmul(g * scaling, B), A);
  EXPECT_EQ(compare(x.grad(), grad_x, 1e-5), "");
  // The exact gradient differs: the compression is what makes A's gradient cheaper.
  const at::Tensor exact_A = at::matmul(at::matmul(g2 * scaling, B).t(), x2);
  EXPECT_NE(compare(lin->adapter_tensor("default", "lora_A.weight").grad(), exact_A, 1e-3), "");
  EXPECT_FALSE(lin->adapter_tensor("default", "lora_velora_embed").requires_grad());
}

TEST(Velora, ProjectionFollowsItsInitTypeAndGroupsNeedNotDivideTheInput) {
  torch::manual_seed(1);
  // in 10, 3 groups: sub-tokens of D = 4 features, the last one zero-padded.
  for (const std::string type : {"batch_average", "batch_average_once"}) {
    peft::nn::Linear lin(10, 6);
    lin->update_layer("default", velora_settings(2, 4.0, 3, 1.0, type));
    const at::Tensor e0 = lin->adapter_tensor("default", "lora_velora_embed").clone();
    EXPECT_EQ(e0.sizes(), (at::IntArrayRef{4}));
    EXPECT_TRUE(e0.eq(0).all().item<bool>());
    lin->train();
    const at::Tensor x0 = torch::randn({5, 10});
    lin->forward_with_adapters(x0);
    const at::Tensor subtokens = at::constant_pad_nd(x0, {0, 2}).reshape({-1, 4});
    const at::Tensor e1 = lin->adapter_tensor("default", "lora_velora_embed").clone();
    EXPECT_EQ(compare(e1, normalized(subtokens.mean(0)), 1e-6), "") << type;
    lin->forward_with_adapters(torch::randn({5, 10}) + 5);
    const at::Tensor e2 = lin->adapter_tensor("default", "lora_velora_embed");
    EXPECT_EQ(at::equal(e1, e2), type == "batch_average_once") << type;
    // Eval and no-grad forwards leave the projection alone.
    lin->eval();
    const at::Tensor before = e2.clone();
    lin->forward_with_adapters(torch::randn({5, 10}) - 3);
    EXPECT_TRUE(at::equal(before, lin->adapter_tensor("default", "lora_velora_embed")));
  }
  peft::nn::Linear lin(10, 6);
  lin->update_layer("default", velora_settings(2, 4.0, 3, 1.0, "random"));
  EXPECT_NEAR(lin->adapter_tensor("default", "lora_velora_embed").norm().item<double>(), 1.0, 1e-6);
}

TEST(Velora, SavedUnderPeftsKeyAndLoadedBitIdentical) {
  torch::manual_seed(2);
  peft::test::MLP mlp;
  peft::LoraConfig c;
  c.r = 4;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.velora_config = peft::VeloraConfig{.num_groups = 3};
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  mlp->train();
  mlp->forward(torch::randn({4, 10})).sum().backward();  // sets the projections
  std::set<std::string> keys;
  for (auto& [k, v] : pm->get_peft_model_state_dict("default")) keys.insert(k);
  EXPECT_TRUE(keys.count("base_model.model.lin0.lora_velora_embed"));
  EXPECT_TRUE(keys.count("base_model.model.lin1.lora_velora_embed"));
  peft::test::TempDir dir;
  pm->save_pretrained(dir.str());
  peft::test::MLP other;
  auto loaded = peft::PeftModel::from_pretrained(other.ptr(), dir.str());
  EXPECT_EQ(peft::test::state_dict_difference(pm->get_peft_model_state_dict("default"),
                                              loaded->get_peft_model_state_dict("default")),
            "");
}

TEST(Velora, RefusedWhereVeloraDoesNotApply) {
  peft::nn::Embedding emb(7, 5);
  EXPECT_THROW(emb->update_layer("default", velora_settings(2, 2, 2, 1.0, "random")),
               peft::ConfigError);
  peft::nn::Linear lin(8, 4);
  auto s = velora_settings(2, 2, 2, 1.0, "random");
  s.use_dora = true;
  EXPECT_NE(
      message_of([&] { lin->update_layer("default", s); }).find("'use_dora', 'velora_config'"),
      std::string::npos);
  peft::LoraConfig c;
  c.velora_config = peft::VeloraConfig{.num_groups = 0, .init_type = "sometimes"};
  const std::string m = message_of([&] { c.validate(); });
  EXPECT_NE(m.find("`num_groups` should be positive, got 0."), std::string::npos) << m;
  EXPECT_NE(m.find("Unsupported `init_type` 'sometimes'"), std::string::npos) << m;
}

}  // namespace
