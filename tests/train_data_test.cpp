// Training data: JSONL formats and their loss masks, bad lines, packing, padding, epoch order.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "peft/error.h"
#include "peft/tokenizer.h"
#include "peft/train/data.h"
#include "test_util.h"

namespace train = peft::train;

namespace {

const peft::Tokenizer& llama3() {
  static const peft::Tokenizer tok =
      peft::Tokenizer::from_dir(peft::test::fixture("tokenizers/llama3"));
  return tok;
}

std::vector<train::Example> load(const std::string& jsonl, const peft::Tokenizer* tok = &llama3(),
                                 train::DataOptions options = {}) {
  peft::test::TempDir dir;
  peft::test::write_file(dir.str("data.jsonl"), jsonl);
  return train::load_jsonl(dir.str("data.jsonl"), tok, options);
}

}  // namespace

TEST(TrainData, PromptCompletionPutsTheLossOnTheCompletionOnly) {
  auto ex = load(R"({"prompt": "Question: what does the cow say?\nAnswer:", "completion": " moo"})"
                 "\n");
  ASSERT_EQ(ex.size(), 1u);
  const auto& tok = llama3();
  const auto prompt = tok.encode("Question: what does the cow say?\nAnswer:");
  auto full = tok.encode("Question: what does the cow say?\nAnswer: moo");
  full.push_back(*tok.eos_token_id());
  EXPECT_EQ(ex[0].input_ids, full);
  ASSERT_EQ(ex[0].labels.size(), full.size());
  for (size_t i = 0; i < full.size(); ++i)
    EXPECT_EQ(ex[0].labels[i], i < prompt.size() ? -100 : full[i]) << i;
  EXPECT_EQ(ex[0].line, 1);
}

TEST(TrainData, TextLearnsEveryTokenAndEndsWithEos) {
  auto ex = load("\n{\"text\": \"The cow says moo.\"}\n\n");
  ASSERT_EQ(ex.size(), 1u);
  EXPECT_EQ(ex[0].line, 2);
  EXPECT_EQ(ex[0].labels, ex[0].input_ids);
  EXPECT_EQ(ex[0].input_ids.back(), *llama3().eos_token_id());
  EXPECT_EQ(ex[0].input_ids.front(), *llama3().bos_token_id());
}

TEST(TrainData, PreTokenizedLinesNeedNoTokenizer) {
  auto ex = load("{\"input_ids\": [5, 6, 7], \"labels\": [-100, 6, 7]}\n{\"input_ids\": [1, 2]}\n",
                 nullptr);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].labels, (std::vector<int64_t>{-100, 6, 7}));
  EXPECT_EQ(ex[1].labels, (std::vector<int64_t>{1, 2}));
}

TEST(TrainData, MessagesUseTheChatTemplateWithLossOnAssistantTurns) {
  auto ex = load(
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},)"
      R"( {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},)"
      R"( {"role": "assistant", "content": "Goodbye."}]})"
      "\n");
  ASSERT_EQ(ex.size(), 1u);
  std::vector<int64_t> learned;
  for (size_t i = 0; i < ex[0].labels.size(); ++i) {
    if (ex[0].labels[i] != -100) learned.push_back(ex[0].labels[i]);
  }
  const std::string text = llama3().decode(learned);
  // Llama 3's template closes every turn with <|eot_id|>; the assistant turns (and only they) are
  // learned.
  EXPECT_EQ(text, "Hello!<|eot_id|>Goodbye.<|eot_id|>");
  const std::string all = llama3().decode(ex[0].input_ids);
  EXPECT_NE(all.find("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"), std::string::npos)
      << all;
}

TEST(TrainData, MaxLengthTruncatesAndPackingCutsBlocks) {
  const std::string lines =
      "{\"input_ids\": [1, 2, 3, 4, 5], \"labels\": [-100, 2, 3, 4, 5]}\n"
      "{\"input_ids\": [6, 7, 8]}\n";
  auto cut = load(lines, nullptr, {.max_length = 4});
  EXPECT_EQ(cut[0].input_ids, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(cut[0].labels, (std::vector<int64_t>{-100, 2, 3, 4}));
  auto packed = load(lines, nullptr, {.max_length = 3, .packing = true});
  ASSERT_EQ(packed.size(), 3u);
  EXPECT_EQ(packed[0].input_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(packed[0].labels, (std::vector<int64_t>{-100, 2, 3}));
  EXPECT_EQ(packed[1].input_ids, (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(packed[2].input_ids, (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(packed[2].line, 2);
}

TEST(TrainData, CollatePadsRightAndCountsShiftedLabels) {
  train::Example a{.input_ids = {1, 2, 3}, .labels = {-100, 2, 3}};
  train::Example b{.input_ids = {4}, .labels = {4}};
  const auto batch = train::collate({&a, &b}, 0);
  EXPECT_TRUE(torch::equal(batch.input_ids,
                           torch::tensor({1, 2, 3, 4, 0, 0}, torch::kLong).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(batch.attention_mask,
                           torch::tensor({1, 1, 1, 1, 0, 0}, torch::kLong).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(
      batch.labels, torch::tensor({-100, 2, 3, 4, -100, -100}, torch::kLong).reshape({2, 3})));
  EXPECT_EQ(batch.num_tokens, 4);
  EXPECT_EQ(batch.num_label_tokens,
            2);  // labels 2, 3; the first position of a row is never predicted
}

TEST(TrainData, EpochOrderIsASeededPermutation) {
  const auto plain = train::epoch_order(10, 7, 0, false);
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(plain[static_cast<size_t>(i)], i);
  const auto e0 = train::epoch_order(10, 7, 0, true), e1 = train::epoch_order(10, 7, 1, true);
  EXPECT_EQ(e0, train::epoch_order(10, 7, 0, true));
  EXPECT_NE(e0, e1);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, plain);
}

class TrainDataBadLine : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(TrainDataBadLine, NamesTheFileLineAndProblem) {
  const auto& [line, expected] = GetParam();
  peft::test::TempDir dir;
  peft::test::write_file(dir.str("bad.jsonl"), "{\"text\": \"fine\"}\n" + line + "\n");
  try {
    train::load_jsonl(dir.str("bad.jsonl"), &llama3(), {});
    FAIL() << "no error for " << line;
  } catch (const peft::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("bad.jsonl:2:"), std::string::npos) << what;
    EXPECT_NE(what.find(expected), std::string::npos) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Lines, TrainDataBadLine,
    ::testing::Values(
        std::make_pair("{\"text\": \"unterminated", "not valid JSON"),
        std::make_pair("[1, 2]", "expected a JSON object"),
        std::make_pair("{\"question\": \"x\"}", "unrecognised example with keys [\"question\"]"),
        std::make_pair("{\"input_ids\": [1, \"two\"]}", "\"input_ids\"[1] must be an integer"),
        std::make_pair("{\"input_ids\": [1, 2], \"labels\": [1]}", "\"labels\" has 1 entries"),
        std::make_pair("{\"prompt\": 3, \"completion\": \"a\"}", "\"prompt\" must be a string"),
        std::make_pair("{\"messages\": []}", "\"messages\" must be a non-empty array"),
        std::make_pair("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
                       "no \"assistant\" message")),
    [](const auto& test_info) { return "Case" + std::to_string(test_info.index); });

TEST(TrainData, TokenIdsOutsideTheVocabularyNameTheLine) {
  auto ex = load("{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 300]}\n", nullptr);
  try {
    train::check_token_ids(ex, 256, "train.jsonl");
    FAIL();
  } catch (const peft::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("train.jsonl:2: token id 300"), std::string::npos)
        << e.what();
  }
}

// Caught when the data is read, not mid-run ("Target 9999 is out of bounds."); all-masked data
// would end with loss nan.
TEST(TrainData, LabelsOutsideTheVocabularyAndAllMaskedDataAreRefused) {
  auto bad = load("{\"input_ids\": [1, 2, 3], \"labels\": [1, 9999, 3]}\n", nullptr);
  try {
    train::check_token_ids(bad, 256, "train.jsonl");
    FAIL();
  } catch (const peft::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("train.jsonl:1: label 9999"), std::string::npos)
        << e.what();
  }
  auto masked = load(
      "{\"input_ids\": [1, 2], \"labels\": [1, -100]}\n{\"input_ids\": [3], \"labels\": [3]}\n",
      nullptr);
  EXPECT_THROW(train::check_token_ids(masked, 256, "train.jsonl"), peft::FormatError);
  auto fine = load("{\"input_ids\": [1, 2], \"labels\": [-100, 2]}\n", nullptr);
  EXPECT_NO_THROW(train::check_token_ids(fine, 256, "train.jsonl"));
}
