// Training losses: transformers' causal-LM shift and ignore_index, checked by hand.
#include "peft/train/loss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

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

TEST(SequenceClassificationLoss, IsMeanCrossEntropy) {
  auto logits = torch::tensor({{2.0, 0.0}, {0.0, 1.0}});
  auto labels = torch::tensor({0, 1}, torch::kLong);
  auto lp = torch::log_softmax(logits, -1);
  EXPECT_NEAR(peft::train::sequence_classification_loss(logits, labels).item<double>(),
              -(lp[0][0] + lp[1][1]).item<double>() / 2.0, 1e-6);
}

}  // namespace
