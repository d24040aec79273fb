// PEFT's merge_utils math on hand-computed tensors: task arithmetic, pruning, sign election,
// disjoint merge, TIES, DARE and magnitude_prune.
#include "peft/merge_utils.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "test_util.h"

using peft::test::compare;
namespace merge = peft::merge;

namespace {

TEST(MergeUtils, TaskArithmeticIsTheWeightedSum) {
  at::Tensor a = torch::tensor({1.0f, -2.0f, 3.0f}), b = torch::tensor({0.5f, 4.0f, -1.0f});
  EXPECT_EQ(compare(merge::task_arithmetic({a, b}, {2.0, -1.0}), torch::tensor({1.5f, -8.0f, 7.0f}),
                    1e-6),
            "");
  EXPECT_THROW(merge::task_arithmetic({a, b}, {1.0}), peft::ConfigError);
  EXPECT_THROW(merge::task_arithmetic({a, torch::zeros({2})}, {1.0, 1.0}),
               peft::ShapeMismatchError);
}

TEST(MergeUtils, MagnitudePruningKeepsTheLargestEntries) {
  at::Tensor t = torch::tensor({{0.1f, -5.0f}, {3.0f, -0.2f}});
  EXPECT_EQ(compare(merge::prune(t, 0.5, merge::PruneMethod::kMagnitude),
                    torch::tensor({{0.0f, -5.0f}, {3.0f, 0.0f}}), 0.0),
            "");
  // int(0.3 * 4) = 1 entry kept
  EXPECT_EQ(compare(merge::prune(t, 0.3, merge::PruneMethod::kMagnitude),
                    torch::tensor({{0.0f, -5.0f}, {0.0f, 0.0f}}), 0.0),
            "");
  peft::ScopedWarningCapture w;
  EXPECT_TRUE(at::equal(merge::prune(t, 1.0, merge::PruneMethod::kMagnitude), t));
  EXPECT_TRUE(w.contains("no pruning"));
  EXPECT_THROW(merge::prune(t, -0.1, merge::PruneMethod::kRandom), peft::ConfigError);
}

TEST(MergeUtils, RandomPruningKeepsADensityFractionRescaled) {
  torch::manual_seed(0);
  at::Tensor t = torch::ones({100000});
  at::Tensor p = merge::prune(t, 0.25, merge::PruneMethod::kRandom, /*rescale=*/true);
  // Every entry is 0 or 1 / density, and about a quarter survive: the mean stays ~1.
  EXPECT_EQ(((p == 0) | (p == 4)).all().item<bool>(), true);
  EXPECT_NEAR(p.mean().item<double>(), 1.0, 0.03);
  at::Tensor q = merge::prune(t, 0.25, merge::PruneMethod::kRandom, /*rescale=*/false);
  EXPECT_NEAR(q.mean().item<double>(), 0.25, 0.01);
}

TEST(MergeUtils, SignElectionTotalAndFrequency) {
  // Column 0: values 3, -1, -1: total +1 (sum 1), frequency -1 (one +, two -).
  at::Tensor stacked = torch::tensor({{3.0f, 0.0f}, {-1.0f, 2.0f}, {-1.0f, -2.0f}});
  at::Tensor total = merge::calculate_majority_sign_mask(stacked, merge::MajoritySign::kTotal);
  at::Tensor freq = merge::calculate_majority_sign_mask(stacked, merge::MajoritySign::kFrequency);
  EXPECT_TRUE(at::equal(total.select(1, 0), torch::tensor({true, false, false})));
  EXPECT_TRUE(at::equal(freq.select(1, 0), torch::tensor({false, true, true})));
  // Column 1: sum 0 elects +1; the zero never agrees.
  EXPECT_TRUE(at::equal(total.select(1, 1), torch::tensor({false, true, false})));
  EXPECT_EQ(merge::parse_majority_sign("frequency"), merge::MajoritySign::kFrequency);
  EXPECT_THROW(merge::parse_majority_sign("mean"), peft::ConfigError);
}

TEST(MergeUtils, DisjointMergeAveragesTheAgreeingEntries) {
  at::Tensor stacked = torch::tensor({{2.0f, 1.0f}, {4.0f, -1.0f}, {-3.0f, 0.0f}});
  at::Tensor mask = torch::tensor({{true, true}, {true, false}, {false, false}});
  EXPECT_EQ(compare(merge::disjoint_merge(stacked, mask), torch::tensor({3.0f, 1.0f}), 1e-6), "");
  // No agreeing entry: 0, not NaN.
  EXPECT_EQ(
      compare(merge::disjoint_merge(stacked, torch::zeros_like(mask)), torch::zeros({2}), 0.0), "");
}

TEST(MergeUtils, TiesElectsOnUnweightedPrunedTensors) {
  at::Tensor a = torch::tensor({4.0f, -1.0f, 0.5f, 2.0f});
  at::Tensor b = torch::tensor({-1.5f, -3.0f, 0.1f, 1.0f});
  // density 0.5: a keeps {4, 2}, b keeps {-1.5, -3}. Signs elected on the pruned, unweighted sums:
  // [2.5, -3, 0, 2]
  // -> [+, -, +, +]. Weighted (1, 10): a' = [4, 0, 0, 2], b' = [-15, -30, 0, 0]; agreeing: [a, b,
  // -, a].
  at::Tensor got = merge::ties({a, b}, {1.0, 10.0}, 0.5);
  EXPECT_EQ(compare(got, torch::tensor({4.0f, -30.0f, 0.0f, 2.0f}), 1e-6), "");
  EXPECT_EQ(compare(merge::magnitude_prune({a, b}, {1.0, 10.0}, 0.5),
                    torch::tensor({-11.0f, -30.0f, 0.0f, 2.0f}), 1e-6),
            "");
}

TEST(MergeUtils, DareAtDensityOneIsDeterministic) {
  at::Tensor a = torch::tensor({4.0f, -1.0f}), b = torch::tensor({-2.0f, -3.0f});
  EXPECT_EQ(compare(merge::dare_linear({a, b}, {0.5, 1.0}, 1.0),
                    merge::task_arithmetic({a, b}, {0.5, 1.0}), 0.0),
            "");
  // dare_ties at density 1 = sign election + disjoint merge of the weighted tensors: [+: 2 (a
  // only), -: mean(-0.5, -3)]
  EXPECT_EQ(compare(merge::dare_ties({a, b}, {0.5, 1.0}, 1.0), torch::tensor({2.0f, -1.75f}), 1e-6),
            "");
}

TEST(MergeUtils, DareEntriesAreOneOfTheKeepDropCandidates) {
  torch::manual_seed(1);
  at::Tensor a = torch::randn({50}), b = torch::randn({50});
  at::Tensor got = merge::dare_linear({a, b}, {0.7, 0.3}, 0.5);
  // Each entry is a weighted sum of {0, T_i / density}: four candidates per position.
  at::Tensor c = at::stack(
      {torch::zeros_like(a), 0.7 * a / 0.5, 0.3 * b / 0.5, 0.7 * a / 0.5 + 0.3 * b / 0.5});
  at::Tensor ok = ((c - got.unsqueeze(0)).abs() < 1e-5).any(0);
  EXPECT_TRUE(ok.all().item<bool>());
}

}  // namespace
