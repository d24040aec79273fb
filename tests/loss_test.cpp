// Training losses: transformers' causal-LM shift and ignore_index, checked by hand.
#include "peft/train/loss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"

namespace {

TEST(CausalLmLoss, ShiftsLabelsAndIgnoresMinus100) {
  torch::manual_seed(0);
  auto logits = torch::randn({2, 4, 5});
  auto labels = torch::tensor({{1, 2, -100, 4}, {-100, 0, 3, -100}}, torch::kLong);
  // Position t predicts labels[t + 1]: pairs (0,2) (1,-100) (2,4) | (0,0) (1,3) (2,-100).
  auto lp = torch::log_softmax(logits, -1);
  const double expected =
      -(lp[0][0][2] + lp[0][2][4] + lp[1][0][0] + lp[1][1][3]).item<double>() / 4.0;
  EXPECT_NEAR(peft::train::causal_lm_loss(logits, labels).item<double>(), expected, 1e-6);
  EXPECT_THROW(peft::train::causal_lm_loss(logits, labels.slice(1, 0, 3)),
               peft::ShapeMismatchError);
}

// The chunked cross-entropy against LibTorch's: a vocabulary large enough for several chunks (a
// chunk is ~256 K elements: 3 rows of 70,000), ignored positions, float32 and bfloat16 logits.
TEST(CausalLmLoss, MatchesLibTorchsCrossEntropyValueAndGradient) {
  torch::manual_seed(0);
  const int64_t vocab = 70000;
  auto labels = torch::randint(0, vocab, {2, 9}, torch::kLong);
  labels.index_put_({0, 3}, -100);
  labels.index_put_({1, 5}, -100);
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    auto base = (torch::randn({2, 9, vocab}) * 3).to(dtype);
    auto a = base.clone().requires_grad_(true);
    auto b = base.clone().requires_grad_(true);
    auto ours = peft::train::causal_lm_loss(a, labels);
    auto shifted = torch::cat({labels.slice(1, 1), torch::full({2, 1}, -100, torch::kLong)}, 1);
    auto ref = torch::nn::functional::cross_entropy(
        b.to(torch::kFloat).reshape({-1, vocab}), shifted.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    EXPECT_NEAR(ours.item<double>(), ref.item<double>(), 1e-5) << dtype;
    (ours * 2.5).backward();
    (ref * 2.5).backward();
    ASSERT_EQ(a.grad().scalar_type(), dtype);
    EXPECT_TRUE(torch::allclose(a.grad().to(torch::kFloat), b.grad().to(torch::kFloat), 1e-2,
                                dtype == torch::kFloat ? 1e-8 : 1e-6))
        << dtype << " max diff " << (a.grad() - b.grad()).abs().max().item<double>();
    // Ignored positions (and the last one, which predicts nothing) get no gradient.
    EXPECT_EQ(a.grad()[0][2].abs().max().item<double>(), 0.0);
    EXPECT_EQ(a.grad()[1][8].abs().max().item<double>(), 0.0);
  }
  // Every label ignored: NaN, as cross_entropy's mean over nothing, and a zero gradient.
  auto none = torch::full({1, 3}, -100, torch::kLong);
  auto x = torch::randn({1, 3, 5}).requires_grad_(true);
  const auto nan_loss = peft::train::causal_lm_loss(x, none);
  EXPECT_TRUE(std::isnan(nan_loss.item<double>()));
  nan_loss.backward();
  EXPECT_EQ(x.grad().abs().sum().item<double>(), 0.0);
  // A label outside the vocabulary is an error, not a read out of bounds.
  EXPECT_ANY_THROW(peft::train::causal_lm_loss(torch::randn({1, 3, 5}),
                                               torch::tensor({{0, 7, 1}}, torch::kLong)));
}

TEST(SequenceClassificationLoss, IsMeanCrossEntropy) {
  auto logits = torch::tensor({{2.0, 0.0}, {0.0, 1.0}});
  auto labels = torch::tensor({0, 1}, torch::kLong);
  auto lp = torch::log_softmax(logits, -1);
  EXPECT_NEAR(peft::train::sequence_classification_loss(logits, labels).item<double>(),
              -(lp[0][0] + lp[1][1]).item<double>() / 2.0, 1e-6);
}

}  // namespace
