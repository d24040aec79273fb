// Weight-based initialisations: the properties PiSSA, OLoRA and orthogonal promise, the randomized
// SVD, and the PiSSA -> LoRA conversion round trip (converted LoRA on the original base = PiSSA
// adapter on the residual base).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "../src/lora/init_weights.h"
#include "peft/error.h"
#include "peft/lora/conv.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;

namespace {

// This file's MLP: 12 -> 20 -> 6 unless given.
struct MLP : peft::test::MLP {
  explicit MLP(int64_t in = 12, int64_t hidden = 20, int64_t out = 6)
      : peft::test::MLP(in, hidden, out) {}
};

LoraConfig config(const std::string& init, int r = 4, double alpha = 6) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  if (init != "true") c.init_lora_weights = peft::parse_init_lora_weights(init);
  return c;
}

at::Tensor A_of(peft::nn::LoraLayerImpl& l) {
  return l.adapter_tensors("default").at(0).second.detach();
}
at::Tensor B_of(peft::nn::LoraLayerImpl& l) {
  return l.adapter_tensors("default").at(1).second.detach();
}

class InitTest : public ::testing::TestWithParam<std::string> {};

// PiSSA, OLoRA: residual + s B A = W exactly (up to float error), so the model's output is
// unchanged.
TEST_P(InitTest, ResidualPlusAdapterEqualsTheOriginalWeight) {
  torch::manual_seed(0);
  MLP mlp;
  const at::Tensor x = torch::randn({5, 12});
  const at::Tensor w0 = mlp->lin0->weight().detach().clone();
  const at::Tensor before = mlp->forward(x).detach();
  auto pm = peft::get_peft_model(mlp.ptr(), config(GetParam()));
  torch::NoGradGuard no_grad;
  auto& l = *mlp->lin0;
  EXPECT_EQ(compare(l.weight() + l.get_delta_weight("default"), w0, 1e-5), "");
  EXPECT_GT((l.weight() - w0).abs().max().item<double>(), 1e-3)
      << "the base must hold the residual";
  EXPECT_EQ(compare(mlp->forward(x), before, 1e-5), "");
  // Disabled adapters now give the residual model, which differs.
  auto guard = pm->disable_adapter();
  EXPECT_GT((mlp->forward(x) - before).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Mutating, InitTest, ::testing::Values("pissa", "pissa_niter_4", "olora"));

TEST(PissaInit, TakesTheTopSingularTripletsScaledBySqrtSOverScaling) {
  torch::manual_seed(1);
  MLP mlp;
  const at::Tensor w0 = mlp->lin0->weight().detach().clone();
  auto pm = peft::get_peft_model(mlp.ptr(), config("pissa", 4, 8));  // scaling 2
  auto [U, S, Vh] = at::linalg_svd(w0, false);
  at::Tensor top = at::matmul(U.slice(1, 0, 4) * S.slice(0, 0, 4), Vh.slice(0, 0, 4));
  EXPECT_EQ(compare(mlp->lin0->get_delta_weight("default"), top, 1e-5), "");
  // B's column norms are sqrt(S / scaling): the scaling is divided out of the factors.
  at::Tensor norms = at::linalg_vector_norm(B_of(*mlp->lin0), 2, {0});
  EXPECT_EQ(compare(norms, at::sqrt(S.slice(0, 0, 4) / 2.0), 1e-5), "");
  EXPECT_EQ(compare(mlp->lin0->weight(), w0 - top, 1e-5), "");
}

TEST(PissaInit, FastSvdApproachesTheFullSvdAsNiterGrows) {
  torch::manual_seed(2);
  // A spectrum with a slow decay makes the randomized range finder need power iterations.
  at::Tensor u = std::get<0>(at::linalg_qr(torch::randn({64, 64})));
  at::Tensor v = std::get<0>(at::linalg_qr(torch::randn({48, 48})));
  at::Tensor s = at::pow(at::arange(1, 49, at::kFloat), -0.3);
  at::Tensor W = at::matmul(u.slice(1, 0, 48) * s, v.t());
  auto full = peft::detail::pissa_init(W, 4, 1.0, 0);
  const double best = at::linalg_matrix_norm(full.residual, "fro").item<double>();
  std::vector<double> excess;
  for (int niter : {0, 2, 8, 32}) {
    torch::manual_seed(3);
    auto fast = peft::detail::pissa_init(W, 4, 1.0, std::max(niter, 0) == 0 ? 1 : niter);
    if (niter == 0) continue;
    excess.push_back(at::linalg_matrix_norm(fast.residual, "fro").item<double>() / best - 1.0);
  }
  ASSERT_EQ(excess.size(), 3u);
  EXPECT_GT(excess[0], excess[2]);
  EXPECT_LT(excess[2], 1e-4) << "32 power iterations should match the full SVD's rank-4 truncation";
  for (double e : excess) EXPECT_GE(e, -1e-6) << "no rank-4 approximation beats the truncated SVD";
}

TEST(SvdLowrank, ReconstructsALowRankMatrixInBothOrientations) {
  torch::manual_seed(4);
  for (auto shape : {std::pair<int64_t, int64_t>{40, 12}, {12, 40}}) {
    at::Tensor M = at::matmul(torch::randn({shape.first, 3}), torch::randn({3, shape.second}));
    auto l = peft::detail::svd_lowrank(M, 3, 2);
    EXPECT_EQ(l.U.sizes(), (std::vector<int64_t>{shape.first, 3}));
    EXPECT_EQ(l.V.sizes(), (std::vector<int64_t>{shape.second, 3}));
    EXPECT_EQ(compare(at::matmul(l.U * l.S, l.V.t()), M, 1e-4), "");
  }
  EXPECT_THROW(peft::detail::svd_lowrank(torch::randn({4, 4}), 5, 1), peft::ConfigError);
}

TEST(OrthogonalInit, BAIsZeroAndTheBaseIsUntouched) {
  torch::manual_seed(5);
  MLP mlp(64, 48, 32);
  const at::Tensor w0 = mlp->lin0->weight().detach().clone();
  auto pm = peft::get_peft_model(mlp.ptr(), config("orthogonal", 8));
  at::Tensor A = A_of(*mlp->lin0), B = B_of(*mlp->lin0);
  EXPECT_LT(at::matmul(B, A).abs().max().item<double>(), 1e-6);
  EXPECT_TRUE(at::equal(mlp->lin0->weight(), w0));
  // A's rows span an r/2-dimensional space orthogonal to B's (PEFT builds both from the even / odd
  // rows of one orthogonal matrix), so both factors have rank r / 2 and B^T B A A^T = 0.
  EXPECT_EQ(at::linalg_matrix_rank(A).item<int64_t>(), 4);
  EXPECT_EQ(at::linalg_matrix_rank(B).item<int64_t>(), 4);
  EXPECT_LT(at::matmul(at::matmul(B.t(), B), at::matmul(A, A.t())).abs().max().item<double>(),
            1e-5);
  EXPECT_THROW(peft::get_peft_model(MLP().ptr(), config("orthogonal", 3)), peft::ConfigError);
}

TEST(OloraInit, FactorsAreTheQrFactorsOfTheWeight) {
  torch::manual_seed(6);
  MLP mlp;
  const at::Tensor w0 = mlp->lin0->weight().detach().clone();
  auto pm = peft::get_peft_model(mlp.ptr(), config("olora"));
  at::Tensor B = B_of(*mlp->lin0);
  EXPECT_EQ(compare(at::matmul(B.t(), B), torch::eye(4), 1e-5), "")
      << "B = Q[:, :r] has orthonormal columns";
  at::Tensor A = A_of(*mlp->lin0);
  EXPECT_EQ(compare(A, at::triu(A), 0.0), "") << "A = R[:r] is upper triangular";
}

TEST(WeightInits, ConvLayersRefuseThemAsPeftDoes) {
  struct ConvNet : torch::nn::Module {
    ConvNet() {
      conv = register_module("conv", peft::nn::Conv2d(3, 4, std::vector<int64_t>{3, 3}));
    }
    peft::nn::Conv2d conv{nullptr};
  };
  LoraConfig c = config("pissa");
  c.target_modules = std::vector<std::string>{"conv"};
  EXPECT_THROW(peft::get_peft_model(std::make_shared<ConvNet>(), c), peft::ConfigError);
}

TEST(CordaInit, WithoutPreprocessingIsAClearError) {
  try {
    peft::get_peft_model(MLP().ptr(), config("corda"));
    FAIL() << "expected ConfigError";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("preprocess_corda"), std::string::npos) << e.what();
  }
}

TEST(LoraGaInit, WithoutAGradientFallsBackToTheDefaultInit) {
  auto mlp = MLP();
  auto pm = peft::get_peft_model(mlp.ptr(), config("lora_ga"));
  EXPECT_EQ(B_of(*mlp->lin0).abs().max().item<double>(), 0.0);
}

// Converted LoRA on the original base gives the same outputs as the trained PiSSA adapter on the
// residual base.
TEST(PissaConversion, ConvertedAdapterOnTheOriginalBaseReproducesTheTrainedModel) {
  peft::test::TempDir dir;
  torch::manual_seed(7);
  MLP original;
  const at::Tensor x = torch::randn({6, 12});
  MLP model;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters())
      p.value().copy_(original->named_parameters()[p.key()]);
  }
  LoraConfig c = config("pissa");
  c.rank_pattern = {{"lin1", 2}};
  auto pm = peft::get_peft_model(model.ptr(), c);
  // The initial adapter, saved with init_lora_weights = true (PEFT's documented workflow).
  pm->save_pretrained(dir.str("initial"));
  LoraConfig saved = peft::load_lora_config(dir.str("initial/adapter_config.json"));
  EXPECT_EQ(saved.init_lora_weights.kind, peft::InitLoraWeights::Kind::kPissa);
  {  // "training"
    torch::NoGradGuard no_grad;
    for (auto& [name, layer] : peft::nn::lora_layers(*model)) {
      for (auto& [k, t] : layer->adapter_tensors("default")) t.add_(torch::randn_like(t) * 0.05);
    }
  }
  const at::Tensor trained = model->forward(x).detach();
  pm->save_pretrained(dir.str("converted"), std::nullopt, dir.str("initial"));
  // The initial folder's config is rewritten to init_lora_weights = true.
  EXPECT_EQ(peft::load_lora_config(dir.str("initial/adapter_config.json")).init_lora_weights.kind,
            peft::InitLoraWeights::Kind::kTrue);
  LoraConfig conv = peft::load_lora_config(dir.str("converted/adapter_config.json"));
  EXPECT_EQ(conv.r, 8);
  EXPECT_EQ(conv.lora_alpha, 12);
  EXPECT_EQ(conv.rank_pattern, (std::vector<std::pair<std::string, int>>{{"lin1", 4}}));
  EXPECT_EQ(conv.init_lora_weights.kind, peft::InitLoraWeights::Kind::kTrue);
  auto loaded = peft::PeftModel::from_pretrained(original.ptr(), dir.str("converted"));
  EXPECT_EQ(compare(original->forward(x), trained, 1e-5, 1e-5), "");
  // Without conversion, the trained adapter on the original base does not reproduce the model.
  MLP plain;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : plain->named_parameters())
      p.value().copy_(original->named_parameters()[p.key()]);
  }
  torch::NoGradGuard no_grad;
  auto state = pm->get_peft_model_state_dict("default");
  LoraConfig plain_config = config("true");
  plain_config.rank_pattern = {{"lin1", 2}};
  auto naive = peft::get_peft_model(plain.ptr(), plain_config);
  naive->set_peft_model_state_dict({state.begin(), state.end()}, "default");
  EXPECT_GT((plain->forward(x) - trained).abs().max().item<double>(), 1e-3);
}

TEST(PissaConversion, LoadingAMutatingAdapterWarns) {
  peft::test::TempDir dir;
  auto pm = peft::get_peft_model(MLP().ptr(), config("olora"));
  pm->save_pretrained(dir.str());
  peft::ScopedWarningCapture warnings;
  auto loaded = peft::PeftModel::from_pretrained(MLP().ptr(), dir.str());
  EXPECT_TRUE(warnings.contains("changes the base model's weights"));
}

}  // namespace
