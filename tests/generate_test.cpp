// Text generation (peft::generate) on the golden Llama checkpoint: greedy decoding equals argmax by
// hand, batched prompts of different lengths equal single runs, stop tokens, seeded sampling,
// repetition penalty, input checks, and transformers' logits processors.
#include "peft/generate.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::PretrainedModel;
using peft::test::compare;
using Rows = std::vector<std::vector<int64_t>>;

namespace {

std::string golden(const std::string& case_id, const std::string& rel = "") {
  return peft::test::fixture("golden/" + case_id + (rel.empty() ? "" : "/" + rel));
}

at::Tensor logits_of(PretrainedModel& model, const at::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return model.forward(ForwardInput{ids, {}, {}, nullptr});
}

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model = peft::models::load_pretrained(golden("model-llama", "base"));
    at::Tensor ids =
        peft::io::load_safetensors(golden("model-llama", "inputs.safetensors")).at("input_ids");
    at::Tensor row = ids[0].contiguous();
    const int64_t* p = row.data_ptr<int64_t>();
    long_prompt.assign(p, p + std::min<int64_t>(row.numel(), 7));
    short_prompt.assign(p + 1, p + 4);
  }
  // Greedy decoding by hand: a full forward per step, argmax of the last position.
  std::vector<int64_t> manual_greedy(std::vector<int64_t> tokens, int64_t steps) {
    std::vector<int64_t> out;
    for (int64_t s = 0; s < steps; ++s) {
      at::Tensor ids = torch::tensor(tokens, torch::kLong).view({1, -1});
      int64_t next = logits_of(*model, ids)[0][-1].argmax().item<int64_t>();
      out.push_back(next);
      tokens.push_back(next);
    }
    return out;
  }
  std::shared_ptr<PretrainedModel> model;
  std::vector<int64_t> long_prompt, short_prompt;
};

TEST_F(GenerateTest, GreedyEqualsManualArgmaxAndIsDeterministic) {
  peft::GenerationConfig config{.max_new_tokens = 10};
  auto a = peft::generate(*model, {long_prompt}, config);
  auto b = peft::generate(*model, {long_prompt}, config);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0], manual_greedy(long_prompt, 10));
  EXPECT_EQ(a, b);
}

TEST_F(GenerateTest, BatchedPromptsOfDifferentLengthsEqualSingleRuns) {
  peft::GenerationConfig config{.max_new_tokens = 12};
  std::vector<std::pair<size_t, int64_t>> streamed;
  auto batched =
      peft::generate(*model, {long_prompt, short_prompt}, config,
                     [&](size_t row, int64_t token) { streamed.emplace_back(row, token); });
  ASSERT_EQ(batched.size(), 2u);
  EXPECT_EQ(batched[0], peft::generate(*model, {long_prompt}, config)[0]);
  EXPECT_EQ(batched[1], peft::generate(*model, {short_prompt}, config)[0]);
  EXPECT_EQ(batched[1], manual_greedy(short_prompt, 12));
  ASSERT_EQ(streamed.size(), 24u);
  std::vector<std::vector<int64_t>> regrouped(2);
  for (const auto& [row, token] : streamed) regrouped[row].push_back(token);
  EXPECT_EQ(regrouped, batched);
}

TEST_F(GenerateTest, StopTokenEndsOnlyItsRow) {
  peft::GenerationConfig config{.max_new_tokens = 12};
  auto free_run = peft::generate(*model, {long_prompt, short_prompt}, config);
  const int64_t stop = free_run[0][3];
  auto truncated = [&](const std::vector<int64_t>& seq) {
    auto it = std::find(seq.begin(), seq.end(), stop);
    return it == seq.end() ? seq : std::vector<int64_t>(seq.begin(), it + 1);
  };
  config.eos_token_ids = {stop};
  auto stopped = peft::generate(*model, {long_prompt, short_prompt}, config);
  EXPECT_EQ(stopped[0], truncated(free_run[0]));
  EXPECT_LE(stopped[0].size(), 4u);
  EXPECT_EQ(stopped[0].back(), stop);
  EXPECT_EQ(stopped[1], truncated(free_run[1]));
}

TEST_F(GenerateTest, SameSeedGivesSameSamples) {
  peft::GenerationConfig config{.max_new_tokens = 16,
                                .do_sample = true,
                                .temperature = 1.5,
                                .top_k = 40,
                                .top_p = 0.95,
                                .seed = 7};
  auto a = peft::generate(*model, {long_prompt, short_prompt}, config);
  auto b = peft::generate(*model, {long_prompt, short_prompt}, config);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a[0].size(), 16u);
  bool any_different = false;
  for (uint64_t seed = 8; seed < 12 && !any_different; ++seed) {
    config.seed = seed;
    any_different = peft::generate(*model, {long_prompt, short_prompt}, config) != a;
  }
  EXPECT_TRUE(any_different);
}

TEST_F(GenerateTest, RepetitionPenaltyChangesGreedyOutputOnlyThroughLogits) {
  peft::GenerationConfig config{.max_new_tokens = 8, .repetition_penalty = 1.3};
  auto out = peft::generate(*model, {long_prompt}, config)[0];
  // By hand: full forward, processors, argmax.
  std::vector<int64_t> tokens = long_prompt, expected;
  for (int s = 0; s < 8; ++s) {
    at::Tensor logits =
        logits_of(*model, torch::tensor(tokens, torch::kLong).view({1, -1}))[0][-1].view({1, -1});
    int64_t next = peft::process_logits(logits, {tokens}, config).argmax(-1).item<int64_t>();
    expected.push_back(next);
    tokens.push_back(next);
  }
  EXPECT_EQ(out, expected);
}

TEST_F(GenerateTest, RejectsBadInput) {
  peft::GenerationConfig config;
  EXPECT_THROW(peft::generate(*model, Rows(1), config), peft::ShapeMismatchError);
  EXPECT_THROW(peft::generate(*model, Rows{{1, 256}}, config), peft::ShapeMismatchError);
  config.do_sample = true;
  config.temperature = 0;
  EXPECT_THROW(peft::generate(*model, {{1, 2}}, config), peft::ConfigError);
  config.temperature = 1;
  config.top_p = 0;
  EXPECT_THROW(peft::generate(*model, {{1, 2}}, config), peft::ConfigError);
  EXPECT_TRUE(peft::generate(*model, {{1, 2}}, {.max_new_tokens = 0})[0].empty());
}

TEST(GenerateProcessors, FollowTransformersLogitsProcessors) {
  const float inf = std::numeric_limits<float>::infinity();
  // RepetitionPenaltyLogitsProcessor: seen positive logits divided, negative multiplied; duplicates
  // once.
  peft::GenerationConfig rep{.repetition_penalty = 2.0};
  at::Tensor r =
      peft::process_logits(torch::tensor({{2.0f, -2.0f, 1.0f, 0.5f}}), Rows{{0, 1, 1}}, rep);
  EXPECT_EQ(compare(r, torch::tensor({{1.0f, -4.0f, 1.0f, 0.5f}}), 0), "");
  // Greedy ignores temperature / top-k / top-p.
  peft::GenerationConfig greedy{.temperature = 0.5, .top_k = 1, .top_p = 0.1};
  at::Tensor g = peft::process_logits(torch::tensor({{1.0f, 3.0f, 2.0f}}), Rows(1), greedy);
  EXPECT_EQ(compare(g, torch::tensor({{1.0f, 3.0f, 2.0f}}), 0), "");
  // Temperature then top-k (ties at the k-th value kept).
  peft::GenerationConfig topk{.do_sample = true, .temperature = 2.0, .top_k = 2};
  at::Tensor k =
      peft::process_logits(torch::tensor({{1.0f, 3.0f, 2.0f, 2.0f, 0.0f}}), Rows(1), topk);
  at::Tensor k_expected = torch::tensor({{-inf, 1.5f, 1.0f, 1.0f, -inf}});
  EXPECT_TRUE(torch::equal(k.isinf(), k_expected.isinf()));
  EXPECT_EQ(compare(k.nan_to_num(0, 0, -1e9), k_expected.nan_to_num(0, 0, -1e9), 1e-7), "");
  // Top-p: drop the low tail whose cumulative mass is <= 1 - top_p.
  peft::GenerationConfig topp{.do_sample = true, .top_k = 0, .top_p = 0.7};
  at::Tensor probs = torch::tensor({{0.05f, 0.5f, 0.15f, 0.3f}});
  at::Tensor p = peft::process_logits(probs.log(), Rows(1), topp);
  EXPECT_TRUE(torch::isinf(p[0][0]).item<bool>());
  EXPECT_TRUE(torch::isinf(p[0][2]).item<bool>());
  EXPECT_TRUE(torch::isfinite(p[0][1]).item<bool>());
  EXPECT_TRUE(torch::isfinite(p[0][3]).item<bool>());
  // top_p keeps at least one token.
  peft::GenerationConfig tiny_p{.do_sample = true, .top_k = 0, .top_p = 1e-6};
  at::Tensor one = peft::process_logits(probs.log(), Rows(1), tiny_p);
  EXPECT_EQ(torch::isfinite(one).sum().item<int64_t>(), 1);
  EXPECT_TRUE(torch::isfinite(one[0][1]).item<bool>());
}

}  // namespace
