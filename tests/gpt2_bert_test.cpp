// GPT-2, BERT and RoBERTa against transformers / PEFT golden logits (base, with adapter, merged),
// plus GPT-2's decoding invariants (KV cache, left padding, tied lm_head) and config / input
// errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::models::ForwardInput;
using peft::models::PretrainedModel;
using peft::test::compare;
using peft::test::fixture;

namespace {

std::string case_dir(const std::string& id) { return fixture("golden/" + id); }

ForwardInput golden_inputs(const std::string& id) {
  auto t = peft::io::load_safetensors(case_dir(id) + "/inputs.safetensors");
  ForwardInput in;
  in.input_ids = t.at("input_ids");
  if (t.count("attention_mask")) in.attention_mask = t.at("attention_mask");
  if (t.count("token_type_ids")) in.token_type_ids = t.at("token_type_ids");
  return in;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

nlohmann::json base_config(const std::string& id) {
  return nlohmann::json::parse(peft::test::read_file(case_dir(id) + "/base/config.json"));
}

// ---- golden: transformers base logits, PEFT adapter logits, merge_and_unload logits ----

class ModelGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelGolden, BaseAdapterAndMergedLogitsMatchPeft) {
  torch::NoGradGuard no_grad;
  const std::string dir = case_dir(GetParam());
  auto expected = peft::io::load_safetensors(dir + "/expected.safetensors");
  const ForwardInput in = golden_inputs(GetParam());

  auto model = peft::models::load_pretrained(dir + "/base");
  const auto base = model->forward(in);
  EXPECT_EQ(compare(base, expected.at("logits_base"), 1e-4), "");

  auto pm = peft::PeftModel::from_pretrained(model, dir + "/adapter");
  const auto adapted = model->forward(in);
  EXPECT_EQ(compare(adapted, expected.at("logits_adapter"), 1e-4), "");
  EXPECT_GT(max_abs_diff(adapted, base), 1e-3) << "the adapter should change the logits";

  auto merged_model = std::dynamic_pointer_cast<PretrainedModel>(pm->merge_and_unload());
  ASSERT_TRUE(merged_model);
  const auto merged = merged_model->forward(in);
  EXPECT_EQ(compare(merged, expected.at("logits_merged"), 1e-4), "");

  std::cout << "[ " << GetParam() << " ] max |diff| base "
            << max_abs_diff(base, expected.at("logits_base")) << ", adapter "
            << max_abs_diff(adapted, expected.at("logits_adapter")) << ", merged "
            << max_abs_diff(merged, expected.at("logits_merged")) << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Cases, ModelGolden,
                         ::testing::Values("model-gpt2", "model-bert-seqcls",
                                           "model-roberta-seqcls"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string s = p.param;
                           for (auto& ch : s) ch = ch == '-' ? '_' : ch;
                           return s;
                         });

// ---- GPT-2 ----

class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    model = peft::models::load_pretrained(case_dir("model-gpt2") + "/base");
    ids = golden_inputs("model-gpt2").input_ids;  // (2, 7)
  }
  torch::Tensor logits(const torch::Tensor& input_ids, const torch::Tensor& mask = {},
                       peft::models::KVCache* cache = nullptr) {
    ForwardInput in;
    in.input_ids = input_ids;
    in.attention_mask = mask;
    in.cache = cache;
    return model->forward(in);
  }
  torch::NoGradGuard no_grad;
  std::shared_ptr<PretrainedModel> model;
  torch::Tensor ids;
};

TEST_F(Gpt2Test, ReportsPeftModelInfo) {
  EXPECT_EQ(model->model_type(), "gpt2");
  EXPECT_EQ(model->class_name(), "GPT2LMHeadModel");
  EXPECT_EQ(model->parent_library(), "transformers.models.gpt2.modeling_gpt2");
  EXPECT_EQ(model->default_target_modules(), std::vector<std::string>{"c_attn"});
  EXPECT_EQ(model->output_embedding_name(), "lm_head");
  EXPECT_EQ(model->input_embedding_name(), "transformer.wte");
  EXPECT_EQ(model->task(), peft::models::ModelTask::kCausalLm);
  EXPECT_EQ(model->num_hidden_layers(), 2);
  EXPECT_EQ(model->vocab_size(), 256);
}

TEST_F(Gpt2Test, KvCacheDecodeEqualsFullForward) {
  const auto full = logits(ids);
  peft::models::KVCache cache;
  const auto prefix = logits(ids.slice(1, 0, 4), {}, &cache);
  EXPECT_EQ(compare(prefix, full.slice(1, 0, 4), 1e-5), "");
  ASSERT_EQ(cache.length(), 4);
  ASSERT_EQ(cache.keys.size(), 2u);
  EXPECT_EQ(cache.keys[0].sizes(), (std::vector<int64_t>{2, 4, 4, 16}));
  for (int64_t t = 4; t < ids.size(1); ++t) {
    const auto step = logits(ids.slice(1, t, t + 1), {}, &cache);
    EXPECT_EQ(compare(step, full.slice(1, t, t + 1), 1e-5), "") << "position " << t;
  }
  EXPECT_EQ(cache.length(), ids.size(1));
}

TEST_F(Gpt2Test, LeftPaddedRowEqualsUnpadded) {
  const auto row = ids.slice(0, 1, 2);  // (1, 7)
  const auto alone = logits(row);
  // Batch of a 10-token row and the 7-token row left-padded by 3 (pad id 0, mask 0).
  const auto padded = torch::cat({torch::zeros({1, 3}, torch::kLong), row}, 1);
  const auto other = torch::cat({ids.slice(0, 0, 1), ids.slice(0, 0, 1).slice(1, 0, 3)}, 1);
  const auto batch = torch::cat({other, padded}, 0);
  auto mask = torch::ones({2, 10}, torch::kLong);
  mask.index_put_({1, torch::indexing::Slice(0, 3)}, 0);
  const auto out = logits(batch, mask);
  EXPECT_EQ(compare(out.slice(0, 1, 2).slice(1, 3, 10), alone, 1e-5), "");
  EXPECT_EQ(compare(out.slice(0, 0, 1), logits(other), 1e-5), "");

  // Incremental decoding of the padded batch (generate's path): prefix, then one token with the
  // mask extended.
  peft::models::KVCache cache;
  logits(batch.slice(1, 0, 9), mask.slice(1, 0, 9), &cache);
  const auto step = logits(batch.slice(1, 9, 10), mask, &cache);
  EXPECT_EQ(compare(step.slice(0, 1, 2), alone.slice(1, 6, 7), 1e-5), "");
}

TEST_F(Gpt2Test, TiedLmHeadSharesStorageWithWte) {
  auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("lm_head.weight"));
  const auto& head = params["lm_head.weight"];
  const auto& wte = params["transformer.wte.weight"];
  EXPECT_EQ(head.unsafeGetTensorImpl(), wte.unsafeGetTensorImpl());
  EXPECT_EQ(head.data_ptr(), wte.data_ptr());
  EXPECT_EQ(model->tied_weights(), (std::vector<std::pair<std::string, std::string>>{
                                       {"lm_head.weight", "transformer.wte.weight"}}));

  // Still one tensor after a dtype change at load time.
  auto bf16 =
      peft::models::load_pretrained(case_dir("model-gpt2") + "/base", {.dtype = torch::kBFloat16});
  auto p16 = bf16->named_parameters();
  EXPECT_EQ(p16["lm_head.weight"].unsafeGetTensorImpl(),
            p16["transformer.wte.weight"].unsafeGetTensorImpl());
  EXPECT_EQ(p16["lm_head.weight"].scalar_type(), torch::kBFloat16);
  EXPECT_EQ(compare(p16["lm_head.weight"].to(torch::kFloat), wte, 1e-2, 1e-2), "");
  ForwardInput in;
  in.input_ids = ids;
  EXPECT_EQ(bf16->forward(in).scalar_type(), torch::kBFloat16);
}

// LoRA on the tied lm_head computes what an untied lm_head with the same weights computes, and
// merging into it changes the shared tensor (wte too, as in transformers + PEFT); unmerging
// restores it.
TEST_F(Gpt2Test, LoraOnTiedLmHeadMatchesUntiedLinear) {
  auto cfg = base_config("model-gpt2");
  cfg["tie_word_embeddings"] = false;
  auto untied = peft::models::from_config(cfg.dump());
  untied->eval();  // from_config builds in training mode (dropout on), as transformers does
  auto src = model->named_parameters();
  for (auto& p : untied->named_parameters()) {
    const std::string key = p.key() == "lm_head.weight" ? "transformer.wte.weight" : p.key();
    p.value().copy_(src[key]);
  }
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lm_head"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  const auto base = logits(ids);
  auto pm_tied = peft::get_peft_model(model, c);
  auto pm_untied = peft::get_peft_model(untied, c);
  std::map<std::string, torch::Tensor> sd;
  for (const auto& [k, v] : pm_tied->get_peft_model_state_dict("default")) sd[k] = v;
  pm_untied->set_peft_model_state_dict(sd, "default");
  ForwardInput in;
  in.input_ids = ids;
  const auto adapted = logits(ids);
  EXPECT_GT(max_abs_diff(adapted, base), 1e-3);
  EXPECT_EQ(compare(adapted, untied->forward(in), 1e-5), "");

  const auto wte_before = src["transformer.wte.weight"].clone();
  pm_tied->merge_adapter();
  EXPECT_GT(max_abs_diff(src["transformer.wte.weight"], wte_before), 1e-4);
  pm_tied->unmerge_adapter();
  EXPECT_EQ(compare(src["transformer.wte.weight"], wte_before, 1e-6), "");
  EXPECT_EQ(compare(logits(ids), adapted, 1e-5), "");
}

TEST_F(Gpt2Test, UntiedConfigHasIndependentLmHead) {
  auto cfg = base_config("model-gpt2");
  cfg["tie_word_embeddings"] = false;
  auto untied = peft::models::from_config(cfg.dump());
  auto params = untied->named_parameters();
  EXPECT_NE(params["lm_head.weight"].data_ptr(), params["transformer.wte.weight"].data_ptr());
  EXPECT_TRUE(untied->tied_weights().empty());
}

TEST_F(Gpt2Test, ConcurrentForwardsAgree) {
  const auto reference = logits(ids);
  std::vector<torch::Tensor> outs(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < outs.size(); ++i) {
    threads.emplace_back([&, i] {
      torch::NoGradGuard guard;
      outs[i] = logits(ids);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& o : outs) EXPECT_TRUE(torch::equal(o, reference));
}

TEST_F(Gpt2Test, DefaultTargetModulesAreCAttn) {
  peft::LoraConfig c;
  c.r = 4;
  c.fan_in_fan_out = true;
  auto pm = peft::get_peft_model(model, c);
  EXPECT_EQ(
      pm->targeted_module_names("default"),
      (std::vector<std::string>{"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}));
}

TEST_F(Gpt2Test, BadInputsThrow) {
  EXPECT_THROW(logits(ids, torch::ones({2, 5}, torch::kLong)), peft::ShapeMismatchError);
  EXPECT_THROW(logits(torch::zeros({1, 33}, torch::kLong)),
               peft::ShapeMismatchError);  // n_positions 32
  EXPECT_THROW(logits(ids.to(torch::kFloat)), peft::ShapeMismatchError);
}

// Old GPT-2 files carry the causal-mask buffers "attn.bias" / "attn.masked_bias" and
// lm_head.weight: they load (the buffers with a warning) and give the same logits.
TEST_F(Gpt2Test, CheckpointWithMaskBuffersAndLmHeadLoads) {
  peft::test::TempDir dir;
  auto tensors = peft::io::load_safetensors(case_dir("model-gpt2") + "/base/model.safetensors");
  tensors["transformer.h.0.attn.bias"] = torch::ones({1, 1, 32, 32}).tril().to(torch::kBool);
  tensors["transformer.h.0.attn.masked_bias"] = torch::tensor(-1e4);
  tensors["lm_head.weight"] = tensors.at("transformer.wte.weight").clone();
  peft::io::save_safetensors(dir.str("model.safetensors"), tensors, {{"format", "pt"}});
  peft::test::write_file(dir.str("config.json"), base_config("model-gpt2").dump());
  peft::ScopedWarningCapture warnings;
  auto old = peft::models::load_pretrained(dir.str());
  EXPECT_TRUE(warnings.contains("transformer.h.0.attn.masked_bias"));
  ForwardInput in;
  in.input_ids = ids;
  EXPECT_TRUE(torch::equal(old->forward(in), logits(ids)));
}

TEST(Gpt2Config, BadFieldsAreConfigErrorsNamingTheField) {
  auto expect_error = [](nlohmann::json cfg, const std::string& field) {
    try {
      peft::models::from_config(cfg.dump());
      ADD_FAILURE() << "no error for " << field;
    } catch (const peft::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  auto cfg = base_config("model-gpt2");
  auto c1 = cfg;
  c1["n_head"] = 5;
  expect_error(c1, "n_embd");
  auto c2 = cfg;
  c2["activation_function"] = "gelu_wrong";
  expect_error(c2, "activation_function");
  auto c3 = cfg;
  c3["n_layer"] = "two";
  expect_error(c3, "n_layer");
}

// ---- BERT / RoBERTa ----

class EncoderTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EncoderTest, PaddedRowEqualsUnpadded) {
  torch::NoGradGuard no_grad;
  auto model = peft::models::load_pretrained(case_dir(GetParam()) + "/base");
  const ForwardInput in = golden_inputs(GetParam());
  const auto out = model->forward(in);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 3}));
  // Row 1 is padded at its last 2 positions: the same as its 5 real tokens alone, without a mask.
  ForwardInput alone;
  alone.input_ids = in.input_ids.slice(0, 1, 2).slice(1, 0, 5);
  EXPECT_EQ(compare(out.slice(0, 1, 2), model->forward(alone), 1e-5), "");
}

TEST_P(EncoderTest, ReportsPeftModelInfo) {
  auto model = peft::models::load_pretrained(case_dir(GetParam()) + "/base");
  const bool roberta = GetParam().find("roberta") != std::string::npos;
  EXPECT_EQ(model->model_type(), roberta ? "roberta" : "bert");
  EXPECT_EQ(model->class_name(),
            roberta ? "RobertaForSequenceClassification" : "BertForSequenceClassification");
  EXPECT_EQ(model->parent_library(), roberta ? "transformers.models.roberta.modeling_roberta"
                                             : "transformers.models.bert.modeling_bert");
  EXPECT_EQ(model->default_target_modules(), (std::vector<std::string>{"query", "value"}));
  EXPECT_EQ(model->output_embedding_name(), "");
  EXPECT_EQ(model->input_embedding_name(),
            roberta ? "roberta.embeddings.word_embeddings" : "bert.embeddings.word_embeddings");
  EXPECT_EQ(model->task(), peft::models::ModelTask::kSequenceClassification);
  bool has_pooler = false;
  for (const auto& p : model->named_parameters())
    has_pooler = has_pooler || p.key().find("pooler") != std::string::npos;
  EXPECT_EQ(has_pooler, !roberta);  // RobertaForSequenceClassification: add_pooling_layer=False
}

TEST_P(EncoderTest, ModulesToSaveCopiesTheClassifier) {
  auto model = peft::models::load_pretrained(case_dir(GetParam()) + "/base");
  auto pm = peft::PeftModel::from_pretrained(model, case_dir(GetParam()) + "/adapter");
  const bool roberta = GetParam().find("roberta") != std::string::npos;
  EXPECT_EQ(pm->modules_to_save_names("default"),
            roberta ? (std::vector<std::string>{"classifier.dense", "classifier.out_proj"})
                    : (std::vector<std::string>{"classifier"}));
}

TEST_P(EncoderTest, MissingFieldIsConfigErrorNamingIt) {
  auto cfg = base_config(GetParam());
  cfg.erase("hidden_size");
  try {
    peft::models::from_config(cfg.dump());
    FAIL() << "no error";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
  }
  cfg = base_config(GetParam());
  cfg["hidden_act"] = "nope";
  EXPECT_THROW(peft::models::from_config(cfg.dump()), peft::ConfigError);
}

TEST_P(EncoderTest, NonClassifierArchitectureIsRefused) {
  auto cfg = base_config(GetParam());
  cfg["architectures"] = nlohmann::json::array({"BertForMaskedLM"});
  EXPECT_THROW(peft::models::from_config(cfg.dump()), peft::UnsupportedError);
}

INSTANTIATE_TEST_SUITE_P(Cases, EncoderTest,
                         ::testing::Values("model-bert-seqcls", "model-roberta-seqcls"),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           return p.param.find("roberta") != std::string::npos
                                      ? std::string("roberta")
                                      : std::string("bert");
                         });

TEST(BertConfig, NumLabelsFromId2LabelOrNumLabels) {
  torch::NoGradGuard no_grad;
  auto cfg = base_config("model-bert-seqcls");
  cfg.erase("id2label");
  cfg.erase("label2id");
  cfg["num_labels"] = 5;
  auto model = peft::models::from_config(cfg.dump());
  ForwardInput in;
  in.input_ids = torch::ones({1, 4}, torch::kLong);
  EXPECT_EQ(model->forward(in).sizes(), (std::vector<int64_t>{1, 5}));
}

}  // namespace
