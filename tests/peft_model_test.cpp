// PeftModel: injection into a user's own model, adapter management, merging, parameter counts, bias
// modes, modules_to_save, and PEFT-format save / load.
#include "peft/peft_model.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::PeftModel;
using peft::test::compare;

namespace {

using MLP = peft::test::MLP;

LoraConfig lin_config(std::vector<std::string> targets, bool init = false, int r = 8) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 8;
  c.target_modules = std::move(targets);
  c.init_lora_weights.kind =
      init ? peft::InitLoraWeights::Kind::kTrue : peft::InitLoraWeights::Kind::kFalse;
  return c;
}

class PeftModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    mlp = MLP();
    x = torch::randn({9, 10});
    base_out = mlp->forward(x).detach();
  }
  MLP mlp{nullptr};
  torch::Tensor x, base_out;
};

TEST_F(PeftModelTest, TrainableParametersLineMatchesPeft) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0"}, true));
  // PEFT's own example: lin0 r=8 -> 8*10 + 20*8 = 240 trainable of 262 + 240.
  EXPECT_EQ(pm->get_nb_trainable_parameters(), (std::pair<int64_t, int64_t>{240, 502}));
  EXPECT_EQ(pm->trainable_parameters_line(),
            "trainable params: 240 || all params: 502 || trainable%: 47.8088");
}

TEST_F(PeftModelTest, OnlyAdapterParametersAreTrainable) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  for (const auto& p : mlp->named_parameters()) {
    EXPECT_EQ(p.value().requires_grad(), p.key().find("lora_") != std::string::npos) << p.key();
  }
}

TEST_F(PeftModelTest, InjectingANonZeroAdapterChangesTheOutput) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  EXPECT_GT((mlp->forward(x) - base_out).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(pm->targeted_module_names("default"), (std::vector<std::string>{"lin0", "lin1"}));
}

TEST_F(PeftModelTest, DefaultInitKeepsTheBaseOutput) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}, true));
  EXPECT_EQ(compare(mlp->forward(x), base_out, 1e-6), "");
}

TEST_F(PeftModelTest, DisableAdapterGuardGivesBaseOutputAndRestores) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  auto adapted = mlp->forward(x).detach();
  {
    auto guard = pm->disable_adapter();
    EXPECT_EQ(compare(mlp->forward(x), base_out, 1e-6), "");
    EXPECT_FALSE(mlp->lin0->adapter_tensors("default")[0].second.requires_grad());
  }
  EXPECT_EQ(compare(mlp->forward(x), adapted, 1e-6), "");
  EXPECT_TRUE(mlp->lin0->adapter_tensors("default")[0].second.requires_grad());
}

TEST_F(PeftModelTest, MergeUnmergeAndMergeAndUnload) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  auto adapted = mlp->forward(x).detach();
  auto w0 = mlp->lin0->weight().clone();
  pm->merge_adapter();
  EXPECT_EQ(compare(mlp->forward(x), adapted, 1e-5, 1e-5), "");
  {
    peft::ScopedWarningCapture warnings;
    pm->merge_adapter();
    EXPECT_TRUE(warnings.contains("All adapters are already merged, nothing to do."));
  }
  pm->unmerge_adapter();
  EXPECT_EQ(compare(mlp->lin0->weight(), w0, 1e-6), "");
  auto plain = pm->merge_and_unload();
  EXPECT_EQ(plain.get(), mlp.ptr().get());
  EXPECT_EQ(compare(mlp->forward(x), adapted, 1e-5, 1e-5), "");
  for (const auto& p : mlp->named_parameters())
    EXPECT_EQ(p.key().find("lora_"), std::string::npos) << p.key();
  EXPECT_THROW(pm->merge_adapter(), peft::Error);
}

TEST_F(PeftModelTest, UnloadRemovesAdaptersWithoutMerging) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  pm->unload();
  EXPECT_EQ(compare(mlp->forward(x), base_out, 1e-6), "");
  EXPECT_EQ(mlp->named_parameters().size(), 4u);
}

TEST_F(PeftModelTest, AddSetAndDeleteAdapters) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0"}));
  auto out_default = mlp->forward(x).detach();
  pm->add_adapter("other", lin_config({"lin1"}, false, 4));
  // A new adapter is not activated and starts frozen.
  EXPECT_EQ(pm->active_adapter(), "default");
  EXPECT_EQ(compare(mlp->forward(x), out_default, 1e-6), "");
  EXPECT_FALSE(mlp->lin1->adapter_tensors("other")[0].second.requires_grad());
  pm->set_adapter("other");
  EXPECT_TRUE(mlp->lin1->adapter_tensors("other")[0].second.requires_grad());
  EXPECT_FALSE(mlp->lin0->adapter_tensors("default")[0].second.requires_grad());
  auto out_other = mlp->forward(x).detach();
  EXPECT_GT((out_other - out_default).abs().max().item<double>(), 1e-4);
  EXPECT_THROW(pm->set_adapter("missing"), peft::AdapterNotFoundError);
  EXPECT_THROW(pm->add_adapter("other", lin_config({"lin1"})), peft::ConfigError);
  {
    peft::ScopedWarningCapture warnings;
    pm->delete_adapter("other");
    EXPECT_TRUE(warnings.contains("Setting active adapter to default"));
  }
  EXPECT_EQ(pm->active_adapter(), "default");
  EXPECT_EQ(compare(mlp->forward(x), out_default, 1e-6), "");
  for (const auto& p : mlp->named_parameters())
    EXPECT_EQ(p.key().find("other"), std::string::npos) << p.key();
}

TEST_F(PeftModelTest, DeleteRefusedWhileMerged) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0"}));
  pm->merge_adapter();
  EXPECT_THROW(pm->delete_adapter("default"), peft::Error);
}

TEST_F(PeftModelTest, FailedAddAdapterIsRolledBack) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0"}));
  const auto n = mlp->named_parameters().size();
  EXPECT_THROW(pm->add_adapter("bad", lin_config({"nonexistent"})), peft::NoMatchingModuleError);
  EXPECT_EQ(mlp->named_parameters().size(), n);
  EXPECT_EQ(pm->adapter_names(), (std::vector<std::string>{"default"}));
}

TEST_F(PeftModelTest, BiasModesSetTrainability) {
  auto c = lin_config({"lin0"});
  c.bias = peft::Bias::kAll;
  {
    auto pm = peft::get_peft_model(mlp.ptr(), c);
    EXPECT_TRUE(mlp->lin0->bias().requires_grad());
    EXPECT_TRUE(mlp->lin1->bias().requires_grad());
    EXPECT_FALSE(mlp->lin1->weight().requires_grad());
    EXPECT_THROW(pm->add_adapter("second", c), peft::ConfigError);  // one adapter with bias only
    pm->unload();
  }
  c.bias = peft::Bias::kLoraOnly;
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  EXPECT_TRUE(mlp->lin0->bias().requires_grad());
  EXPECT_FALSE(mlp->lin1->bias().requires_grad());
}

TEST_F(PeftModelTest, ModulesToSaveMakesATrainableCopy) {
  auto c = lin_config({"lin0"});
  c.modules_to_save = std::vector<std::string>{"lin1"};
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  EXPECT_EQ(pm->modules_to_save_names("default"), (std::vector<std::string>{"lin1"}));
  EXPECT_FALSE(mlp->lin1->has_adapter("default"));  // never LoRA-wrapped
  EXPECT_FALSE(mlp->lin1->weight().requires_grad());
  auto copy = mlp->lin1->modules_to_save()->tensors("default");
  EXPECT_TRUE(copy[0].second.requires_grad());
  {
    torch::NoGradGuard no_grad;
    copy[0].second.add_(1.0);
  }
  auto adapted = mlp->forward(x).detach();
  {
    auto guard = pm->disable_adapter();
    EXPECT_EQ(compare(mlp->forward(x), base_out, 1e-6), "");
  }
  auto keys = pm->get_peft_model_state_dict("default");
  std::set<std::string> names;
  for (const auto& [k, v] : keys) names.insert(k);
  EXPECT_TRUE(names.count("base_model.model.lin1.weight"));
  EXPECT_TRUE(names.count("base_model.model.lin1.bias"));
  pm->merge_and_unload();
  EXPECT_EQ(compare(mlp->forward(x), adapted, 1e-5, 1e-5), "");
}

TEST_F(PeftModelTest, UnsupportedFieldsNameTheField) {
  auto c = lin_config({"lin0"});
  // A layer targeted both ways: PEFT's "not a valid target" error.
  c.target_parameters = std::vector<std::string>{"lin0.weight"};
  try {
    peft::get_peft_model(mlp.ptr(), c);
    FAIL() << "expected ConfigError";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("not a valid target"), std::string::npos) << e.what();
  }
  c.target_parameters.reset();
  c.kasa_config = peft::RawJson{R"({"beta":0.001})"};
  EXPECT_NE(peft::test::message_of([&] {
              peft::get_peft_model(mlp.ptr(), c);
            }).find("kasa_config, which peft.cpp does not implement yet"),
            std::string::npos);
}

TEST_F(PeftModelTest, TargetParametersOnALinearWeightIsModuleLora) {
  // PEFT wraps a Linear's 2-D weight in a ParamWrapper: same factors, delta and keys as module
  // LoRA.
  peft::LoraConfig c;
  c.target_modules = std::vector<std::string>{};
  c.target_parameters = std::vector<std::string>{"lin1.weight"};
  c.rank_pattern = {{"lin1.weight", 3}};
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  EXPECT_EQ(pm->targeted_module_names("default"), (std::vector<std::string>{"lin1"}));
  EXPECT_EQ(mlp->lin1->adapter_settings("default").r, 3);
  std::set<std::string> keys;
  for (auto& [k, v] : pm->get_peft_model_state_dict("default")) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"base_model.model.lin1.lora_A.weight",
                                         "base_model.model.lin1.lora_B.weight"}));
}

TEST_F(PeftModelTest, SaveThenLoadIsBitExact) {
  peft::test::TempDir dir;
  auto c = lin_config({"lin0", "lin1"});
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  pm->add_adapter("other", lin_config({"lin1"}, false, 2));
  auto adapted = mlp->forward(x).detach();
  pm->save_pretrained(dir.str());
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "adapter_config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "adapter_model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "other" / "adapter_model.safetensors"));
  peft::io::SafetensorsFile f((dir.path() / "adapter_model.safetensors").string());
  EXPECT_EQ(f.keys().size(), 4u);
  EXPECT_TRUE(f.contains("base_model.model.lin0.lora_A.weight"));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  auto saved = pm->get_peft_model_state_dict("default");

  pm->unload();
  torch::manual_seed(0);  // same base weights as mlp
  MLP base2;
  peft::ScopedWarningCapture warnings;
  auto loaded = PeftModel::from_pretrained(base2.ptr(), dir.str());
  EXPECT_FALSE(warnings.contains("missing"));
  auto reloaded = loaded->get_peft_model_state_dict("default");
  ASSERT_EQ(reloaded.size(), saved.size());
  for (size_t i = 0; i < saved.size(); ++i) {
    EXPECT_EQ(reloaded[i].first, saved[i].first);
    EXPECT_TRUE(torch::equal(reloaded[i].second, saved[i].second)) << saved[i].first;
  }
  EXPECT_EQ(compare(base2->forward(x), adapted, 0.0), "");
  // Loaded for inference: frozen.
  for (const auto& p : base2->named_parameters())
    EXPECT_FALSE(p.value().requires_grad()) << p.key();
  loaded->load_adapter((dir.path() / "other").string(), "other");
  EXPECT_EQ(loaded->adapter_names(), (std::vector<std::string>{"default", "other"}));
}

TEST_F(PeftModelTest, SelectedAdaptersOnly) {
  peft::test::TempDir dir;
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0"}));
  pm->add_adapter("other", lin_config({"lin1"}));
  pm->save_pretrained(dir.str(), std::vector<std::string>{"other"});
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "adapter_config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "other" / "adapter_config.json"));
  EXPECT_THROW(pm->save_pretrained(dir.str(), std::vector<std::string>{"nope"}),
               peft::AdapterNotFoundError);
}

TEST_F(PeftModelTest, ShapeMismatchNamesEveryTensor) {
  peft::test::TempDir dir;
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}, false, 8));
  pm->save_pretrained(dir.str());
  auto other = MLP();
  auto pm2 = peft::get_peft_model(other.ptr(), lin_config({"lin0", "lin1"}, false, 4));
  auto tensors = peft::io::load_safetensors((dir.path() / "adapter_model.safetensors").string());
  try {
    pm2->set_peft_model_state_dict(tensors, "default");
    FAIL() << "expected ShapeMismatchError";
  } catch (const peft::ShapeMismatchError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("lin0.lora_A.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lin1.lora_B.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(8, 10)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("hint"), std::string::npos) << msg;
  }
}

TEST_F(PeftModelTest, MissingKeysWarn) {
  auto pm = peft::get_peft_model(mlp.ptr(), lin_config({"lin0", "lin1"}));
  std::map<std::string, torch::Tensor> partial{
      {"base_model.model.lin0.lora_A.weight", torch::zeros({8, 10})}};
  peft::ScopedWarningCapture warnings;
  auto r = pm->set_peft_model_state_dict(partial, "default");
  EXPECT_EQ(r.missing_keys.size(), 3u);
  EXPECT_TRUE(warnings.contains("Found missing adapter keys while loading the checkpoint"));
}

TEST_F(PeftModelTest, LoadingMissingFolderIsAFormatError) {
  peft::test::TempDir dir;
  EXPECT_THROW(PeftModel::from_pretrained(mlp.ptr(), dir.str()), peft::FormatError);
  peft::test::write_file(dir.str("adapter_config.json"), "{\"peft_type\": \"LORA\"}");
  peft::test::write_file(dir.str("adapter_model.bin"), "pickle");
  EXPECT_THROW(PeftModel::from_pretrained(mlp.ptr(), dir.str()), peft::UnsupportedError);
}

TEST(PeftModelEmbedding, EmbeddingAdapterKeysAreParameterNames) {
  struct EmbImpl : torch::nn::Module {
    EmbImpl() { emb = register_module("emb", peft::nn::Embedding(20, 8)); }
    peft::nn::Embedding emb{nullptr};
  };
  auto m = std::make_shared<EmbImpl>();
  auto pm = peft::get_peft_model(m, lin_config({"emb"}, true, 4));
  auto sd = pm->get_peft_model_state_dict("default");
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd[0].first, "base_model.model.emb.lora_embedding_A");
  EXPECT_EQ(sd[1].first, "base_model.model.emb.lora_embedding_B");
  EXPECT_TRUE(m->named_parameters().contains("emb.lora_embedding_A.default"));
}

}  // namespace

namespace {

// modules_to_save naming a container (RoBERTa's classification head: dense + out_proj): every
// adapter-ready layer inside gets a trainable copy, saved under the container's path as PEFT does.
TEST(PeftModelModulesToSave, ContainerModuleGetsCopiesOfEveryLayer) {
  struct HeadImpl : torch::nn::Module {
    HeadImpl() {
      dense = register_module("dense", peft::nn::Linear(8, 8));
      out_proj = register_module("out_proj", peft::nn::Linear(8, 2));
    }
    peft::nn::Linear dense{nullptr}, out_proj{nullptr};
  };
  struct NetImpl : torch::nn::Module {
    NetImpl() {
      query = register_module("query", peft::nn::Linear(8, 8));
      classifier = register_module("classifier", std::make_shared<HeadImpl>());
    }
    torch::Tensor forward(const torch::Tensor& x) {
      return classifier->out_proj(torch::tanh(classifier->dense(query(x))));
    }
    peft::nn::Linear query{nullptr};
    std::shared_ptr<HeadImpl> classifier;
  };
  torch::manual_seed(0);
  auto net = std::make_shared<NetImpl>();
  auto x = torch::randn({3, 8});
  LoraConfig c = lin_config({"query"});
  c.task_type =
      peft::TaskType::kSeqCls;  // adds "classifier" and "score" to modules_to_save, as PEFT does
  auto pm = peft::get_peft_model(net, c);
  EXPECT_EQ(pm->modules_to_save_names("default"),
            (std::vector<std::string>{"classifier.dense", "classifier.out_proj"}));
  std::set<std::string> keys;
  for (const auto& [k, v] : pm->get_peft_model_state_dict("default")) keys.insert(k);
  EXPECT_TRUE(keys.count("base_model.model.classifier.dense.weight"));
  EXPECT_TRUE(keys.count("base_model.model.classifier.out_proj.bias"));
  {
    torch::NoGradGuard no_grad;
    for (auto& [k, t] : net->classifier->out_proj->modules_to_save()->tensors("default"))
      t.add_(0.5);
  }
  auto adapted = net->forward(x).detach();
  pm->merge_and_unload();
  EXPECT_EQ(compare(net->forward(x), adapted, 1e-5, 1e-5), "");
}

}  // namespace
