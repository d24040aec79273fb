// The incremental PCA behind EVA (PEFT utils/incremental_pca.py, sklearn semantics) and its seeded
// randomized SVD.
#include "../src/init/incremental_pca.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "peft/error.h"
#include "test_util.h"

namespace {

// (n, features) float64 rows: `scales.size()` latent directions with those standard deviations plus
// a mean offset (exact rank = scales.size() after centring).
torch::Tensor low_rank_rows(int64_t n, int64_t features, const std::vector<double>& scales) {
  const auto k = static_cast<int64_t>(scales.size());
  auto basis = std::get<0>(torch::linalg_qr(torch::randn({features, k}, torch::kDouble))).t();
  auto z = torch::randn({n, k}, torch::kDouble) * torch::tensor(scales, torch::kDouble);
  return torch::matmul(z, basis) + 2.0 * torch::randn({1, features}, torch::kDouble);
}

// Top-k principal directions (rows) of x, from a full SVD of the centred rows.
torch::Tensor pca_directions(const torch::Tensor& x, int64_t k) {
  auto rows = x.to(torch::kDouble);
  return std::get<2>(torch::linalg_svd(rows - rows.mean(0), false)).slice(0, 0, k);
}

double min_abs_cos(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::cosine_similarity(a.to(torch::kDouble), b.to(torch::kDouble), 1)
      .abs()
      .min()
      .item<double>();
}

TEST(IncrementalPCA, PartialFitsOverChunksMatchFullPca) {
  torch::manual_seed(1);
  auto x = low_rank_rows(240, 12, {6, 4, 3, 2});
  for (bool lowrank : {false, true}) {
    peft::detail::IncrementalPCA pca({.n_components = 4, .lowrank = lowrank, .lowrank_seed = 42});
    for (int64_t s = 0; s < 240; s += 40) pca.partial_fit(x.slice(0, s, s + 40));
    EXPECT_EQ(pca.n_samples_seen(), 240);
    auto full = pca_directions(x, 4);
    // Same subspace (projectors), and here the same individual directions up to sign.
    auto c = pca.components().to(torch::kDouble);
    EXPECT_EQ(peft::test::compare(c.t().mm(c), full.t().mm(full), 1e-8), "")
        << "lowrank=" << lowrank;
    EXPECT_GT(min_abs_cos(c, full), 1 - 1e-8);
    auto centred = x - x.mean(0);
    auto s = std::get<1>(torch::linalg_svd(centred, false)).slice(0, 0, 4);
    EXPECT_EQ(peft::test::compare(pca.singular_values(), s, 1e-8, 1e-8), "");
    EXPECT_EQ(peft::test::compare(pca.mean(), x.mean(0), 1e-10), "");
    EXPECT_EQ(peft::test::compare(pca.var(), x.var(0, /*unbiased=*/false), 1e-9), "");
    auto ratio = s.square() / centred.square().sum();
    EXPECT_EQ(peft::test::compare(pca.explained_variance_ratio(), ratio, 1e-10), "");
    EXPECT_EQ(peft::test::compare(pca.explained_variance(), s.square() / 239.0, 1e-8, 1e-8), "");
  }
}

TEST(IncrementalPCA, FullRankFitEqualsBatchPcaAndTransformProjects) {
  torch::manual_seed(2);
  auto x = torch::randn({90, 5}, torch::kDouble) *
           torch::tensor({5.0, 3.0, 2.0, 1.0, 0.5}, torch::kDouble);
  peft::detail::IncrementalPCA pca({.n_components = 5, .batch_size = 25});
  pca.fit(x);  // partial fits of 25, 25, 25 and 15 rows
  EXPECT_EQ(pca.n_samples_seen(), 90);
  auto full = pca_directions(x, 5);
  EXPECT_GT(min_abs_cos(pca.components(), full), 1 - 1e-10);
  auto t = pca.transform(x);
  EXPECT_EQ(peft::test::compare(t, (x - x.mean(0)).mm(pca.components().t()), 1e-10), "");
}

TEST(IncrementalPCA, RejectsTooManyComponents) {
  peft::detail::IncrementalPCA wide({.n_components = 6});
  EXPECT_THROW(wide.partial_fit(torch::randn({20, 5})), peft::ConfigError);
  peft::detail::IncrementalPCA tall({.n_components = 4});
  EXPECT_THROW(tall.partial_fit(torch::randn({3, 5})), peft::ShapeMismatchError);
  tall.partial_fit(torch::randn({10, 5}));
  EXPECT_THROW(tall.partial_fit(torch::randn({10, 6})), peft::ShapeMismatchError);
}

TEST(IncrementalPCA, SeededLowRankSvdIsReproducibleAndLeavesGlobalRngAlone) {
  auto a = torch::randn({30, 10});
  torch::manual_seed(7);
  auto before = torch::rand({1});
  torch::manual_seed(7);
  auto r1 = peft::detail::svd_lowrank_seeded(a, 4, 2, 42);
  auto after = torch::rand({1});
  auto r2 = peft::detail::svd_lowrank_seeded(a, 4, 2, 42);
  EXPECT_TRUE(torch::equal(before, after));
  EXPECT_TRUE(torch::equal(r1.Vh, r2.Vh));
  auto wide = peft::detail::svd_lowrank_seeded(a.t(), 10, 2, 42);  // q = min(m, n): exact
  EXPECT_EQ(peft::test::compare(wide.U.mm(torch::diag(wide.S)).mm(wide.Vh), a.t(), 1e-4), "");
}

}  // namespace
