// EVA initialisation (PEFT tuners/lora/eva.py): the incremental PCA, rank redistribution, token
// masks, shared inputs, loading into a PeftModel and the config rewrite.
#include "peft/init/eva.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::train::Batch;

namespace {

// ---- models (features travel in Batch::input_ids as a float tensor (batch, seq, features)) ----

struct OneImpl : torch::nn::Module {
  OneImpl() { lin0 = register_module("lin0", peft::nn::Linear(16, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return lin0(x); }
  peft::nn::Linear lin0{nullptr};
};
TORCH_MODULE(One);

struct MlpImpl : torch::nn::Module {
  MlpImpl() {
    lin0 = register_module("lin0", peft::nn::Linear(16, 16));
    lin1 = register_module("lin1", peft::nn::Linear(16, 8));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lin1(torch::relu(lin0(x))); }
  peft::nn::Linear lin0{nullptr}, lin1{nullptr};
};
TORCH_MODULE(Mlp);

// q and k read the first 16 features (identical inputs), o the last 16.
struct SplitImpl : torch::nn::Module {
  SplitImpl() {
    q = register_module("q", peft::nn::Linear(16, 4));
    k = register_module("k", peft::nn::Linear(16, 4));
    o = register_module("o", peft::nn::Linear(16, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto a = x.slice(-1, 0, 16);
    return q(a) + k(a) + o(x.slice(-1, 16, 32));
  }
  peft::nn::Linear q{nullptr}, k{nullptr}, o{nullptr};
};
TORCH_MODULE(Split);

struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    q = register_module("q", peft::nn::Linear(8, 8));
    v = register_module("v", peft::nn::Linear(8, 8));
    o = register_module("o", peft::nn::Linear(8, 8));
  }
  peft::nn::Linear q{nullptr}, v{nullptr}, o{nullptr};
};
struct StackImpl : torch::nn::Module {
  explicit StackImpl(int n) {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < n; ++i) blocks->push_back(std::make_shared<BlockImpl>());
  }
  torch::Tensor forward(torch::Tensor x) {
    for (const auto& m : *blocks) {
      auto b = std::dynamic_pointer_cast<BlockImpl>(m);
      x = b->o(b->q(x) + b->v(x));
    }
    return x;
  }
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Stack);

// ---- data ----

// (batch, seq, features): `scales.size()` latent directions (a random orthonormal basis) with those
// standard deviations, plus a mean offset and isotropic noise.
torch::Tensor low_rank(int64_t batch, int64_t seq, int64_t features,
                       const std::vector<double>& scales, double noise) {
  const auto k = static_cast<int64_t>(scales.size());
  auto basis = std::get<0>(torch::linalg_qr(torch::randn({features, k}))).t();  // (k, features)
  auto z = torch::randn({batch * seq, k}) * torch::tensor(scales).to(torch::kFloat);
  auto x = torch::matmul(z, basis) + 2.0 * torch::randn({1, features}) +
           noise * torch::randn({batch * seq, features});
  return x.reshape({batch, seq, features});
}

Batch make_batch(torch::Tensor features) {
  Batch b;
  b.input_ids = std::move(features);
  return b;
}

LoraConfig eva_config(std::vector<std::string> targets, int r, double rho) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 8;
  c.target_modules = std::move(targets);
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kEva;
  c.eva_config = peft::EvaConfig{.rho = rho};
  return c;
}

template <class M>
peft::EvaForwardFn forward_of(M model) {
  return [model](const Batch& b) mutable { model->forward(b.input_ids); };
}

// Top-k principal directions (rows) of the rows of x (n, f), float64.
torch::Tensor pca_directions(const torch::Tensor& x, int64_t k) {
  auto rows = x.reshape({-1, x.size(-1)}).to(torch::kDouble);
  auto svd = torch::linalg_svd(rows - rows.mean(0), false);
  return std::get<2>(svd).slice(0, 0, k);
}

// min over rows of |cos(a_i, b_i)|.
double min_abs_cos(const torch::Tensor& a, const torch::Tensor& b) {
  auto a2 = a.to(torch::kDouble), b2 = b.to(torch::kDouble);
  return torch::cosine_similarity(a2, b2, 1).abs().min().item<double>();
}

torch::Tensor lora_tensor(peft::nn::LoraLayerImpl& layer, const std::string& key) {
  for (auto& [k, t] : layer.adapter_tensors("default")) {
    if (k == key) return t;
  }
  return {};
}

int64_t rows_of(const std::map<std::string, torch::Tensor>& sd, const std::string& name) {
  return sd.at(name).size(0);
}

class EvaTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// ---- EVA on a PeftModel ----

TEST_F(EvaTest, ARowsAreTheTopPrincipalComponentsAndOutputIsUnchanged) {
  One model;
  auto x = low_rank(2, 64, 16, {5, 3, 2, 1}, 0.05);
  auto base_out = model->forward(x).detach();
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0"}, 4, 1.0));
  peft::initialize_lora_eva_weights(*pm, {make_batch(x)}, forward_of(model));
  auto A = lora_tensor(*model->lin0, "lora_A.weight");
  ASSERT_EQ(A.sizes(), (torch::IntArrayRef{4, 16}));
  EXPECT_GT(min_abs_cos(A, pca_directions(x, 4)), 0.999);
  EXPECT_EQ(peft::test::compare(A.mm(A.t()), torch::eye(4), 1e-4), "");  // orthonormal rows
  EXPECT_TRUE(lora_tensor(*model->lin0, "lora_B.weight").eq(0).all().item<bool>());
  EXPECT_TRUE(A.requires_grad());
  EXPECT_EQ(peft::test::compare(model->forward(x), base_out, 1e-6), "");
  EXPECT_TRUE(pm->adapters_enabled());
  EXPECT_TRUE(model->is_training());
}

TEST_F(EvaTest, RanksSumToTheBudget) {
  Mlp model;
  auto x = low_rank(2, 64, 16, {6, 5, 1, 0.5}, 0.1);
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0", "lin1"}, 4, 2.0));
  auto sd = peft::get_eva_state_dict(*pm, {make_batch(x)}, forward_of(model));
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(rows_of(sd, "lin0") + rows_of(sd, "lin1"), 8);
  EXPECT_LE(rows_of(sd, "lin0"), 8);
  EXPECT_LE(rows_of(sd, "lin1"), 8);
  // A skewed distribution: the two-direction input of lin0 needs fewer than its share.
  EXPECT_NE(rows_of(sd, "lin0"), 4);
  peft::initialize_lora_eva_weights(*pm, sd);
  int64_t total = 0;
  for (auto& [name, layer] : peft::nn::lora_layers(*model)) {
    if (layer->has_adapter("default")) total += layer->adapter_settings("default").r;
  }
  EXPECT_EQ(total, 8);
}

TEST_F(EvaTest, RhoOneKeepsRanksAndConfig) {
  Mlp model;
  auto x = low_rank(2, 64, 16, {6, 5, 1, 0.5}, 0.1);
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0", "lin1"}, 4, 1.0));
  peft::initialize_lora_eva_weights(*pm, {make_batch(x)}, forward_of(model));
  EXPECT_EQ(model->lin0->adapter_settings("default").r, 4);
  EXPECT_EQ(model->lin1->adapter_settings("default").r, 4);
  const auto& c = pm->peft_config("default");
  EXPECT_TRUE(c.rank_pattern.empty());
  EXPECT_TRUE(c.alpha_pattern.empty());
  EXPECT_EQ(std::get<std::vector<std::string>>(*c.target_modules),
            (std::vector<std::string>{"lin0", "lin1"}));
}

// o sees isotropic noise, q four strong directions: o's explained variance never makes the global
// top.
TEST_F(EvaTest, ZeroRankLayerLosesItsAdapterAndConfigIsRewritten) {
  for (bool adjust : {true, false}) {
    torch::manual_seed(3);
    Split model;
    auto x =
        torch::cat({low_rank(2, 128, 16, {5, 4.5, 4, 3.5}, 0.01), torch::randn({2, 128, 16})}, -1);
    auto config = eva_config({"q", "o"}, 2, 2.0);
    config.eva_config->adjust_scaling_factors = adjust;
    auto pm = peft::get_peft_model(model.ptr(), config);
    peft::initialize_lora_eva_weights(*pm, {make_batch(x)}, forward_of(model));
    EXPECT_FALSE(model->o->has_adapter("default"));
    ASSERT_TRUE(model->q->has_adapter("default"));
    EXPECT_EQ(model->q->adapter_settings("default").r, 4);
    const double alpha = adjust ? 16.0 : 8.0;  // 8 * 4 / 2
    EXPECT_DOUBLE_EQ(model->q->adapter_settings("default").lora_alpha, alpha);
    EXPECT_DOUBLE_EQ(model->q->scaling("default"), alpha / 4);
    const auto& c = pm->peft_config("default");
    EXPECT_EQ(std::get<std::vector<std::string>>(*c.target_modules),
              (std::vector<std::string>{"q"}));
    EXPECT_EQ(c.rank_pattern, (std::vector<std::pair<std::string, int>>{{"q", 4}}));
    if (adjust) {
      EXPECT_EQ(c.alpha_pattern, (std::vector<std::pair<std::string, double>>{{"q", 16.0}}));
    } else {
      EXPECT_TRUE(c.alpha_pattern.empty());
    }
    EXPECT_EQ(pm->targeted_module_names("default"), (std::vector<std::string>{"q"}));
    EXPECT_EQ(lora_tensor(*model->q, "lora_A.weight").size(0), 4);
  }
}

TEST_F(EvaTest, EqualInputLayersShareOnePca) {
  Split model;
  auto x =
      torch::cat({low_rank(2, 128, 16, {5, 4.5, 4, 3.5}, 0.01), torch::randn({2, 128, 16})}, -1);
  auto config = eva_config({"q", "k", "o"}, 2, 1.0);
  config.rank_pattern = {{"k", 4}};
  auto pm = peft::get_peft_model(model.ptr(), config);
  auto sd = peft::get_eva_state_dict(*pm, {make_batch(x)}, forward_of(model));
  // q alone could keep at most round(2 * 1) = 2 components; sharing k's PCA raises that to 4.
  EXPECT_EQ(rows_of(sd, "q"), 4);
  EXPECT_EQ(rows_of(sd, "k"), 4);
  EXPECT_EQ(rows_of(sd, "o"), 0);
  EXPECT_TRUE(torch::equal(sd.at("q"), sd.at("k")));
}

TEST_F(EvaTest, MaskedTokensAreExcluded) {
  One model;
  auto x = low_rank(1, 96, 16, {5, 3, 2, 1}, 0.05);
  // Tokens 64.. are outliers along one feature; they carry label -100 (batch 1) or attention 0
  // (batch 2).
  auto outlier = torch::zeros({16});
  outlier[15] = 100;
  x.slice(1, 64, 96).add_(outlier * torch::randn({1, 32, 1}));
  auto kept = x.slice(1, 0, 64);
  Batch by_labels = make_batch(x);
  by_labels.labels = torch::zeros({1, 96}, torch::kLong);
  by_labels.labels.slice(1, 64, 96).fill_(-100);
  Batch by_attention = make_batch(x);
  by_attention.attention_mask = torch::ones({1, 96}, torch::kLong);
  by_attention.attention_mask.slice(1, 64, 96).zero_();
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0"}, 4, 1.0));
  for (const Batch& b : {by_labels, by_attention}) {
    auto sd = peft::get_eva_state_dict(*pm, {b}, forward_of(model));
    EXPECT_GT(min_abs_cos(sd.at("lin0"), pca_directions(kept, 4)), 0.999);
  }
  // Without the label mask the outliers dominate.
  auto c = pm->peft_config("default");
  c.eva_config->use_label_mask = false;
  pm->update_peft_config("default", c);
  auto sd = peft::get_eva_state_dict(*pm, {by_labels}, forward_of(model));
  EXPECT_GT(std::abs(sd.at("lin0")[0][15].item<double>()), 0.99);
}

TEST_F(EvaTest, WhiteningDividesBySqrtSingularValues) {
  One model;
  auto x = low_rank(2, 64, 16, {5, 3, 2, 1}, 0.05);
  auto config = eva_config({"lin0"}, 4, 1.0);
  config.eva_config->whiten = true;
  auto pm = peft::get_peft_model(model.ptr(), config);
  auto white = peft::get_eva_state_dict(*pm, {make_batch(x)}, forward_of(model)).at("lin0");
  config.eva_config->whiten = false;
  pm->update_peft_config("default", config);
  auto plain = peft::get_eva_state_dict(*pm, {make_batch(x)}, forward_of(model)).at("lin0");
  // One batch converges after two fits of the same rows: the PCA has seen them twice, so its
  // singular values are sqrt(2) times the data's.
  auto rows = x.reshape({-1, 16}).to(torch::kDouble);
  auto s =
      std::get<1>(torch::linalg_svd(rows - rows.mean(0), false)).slice(0, 0, 4) * std::sqrt(2.0);
  EXPECT_EQ(peft::test::compare(white, plain / s.sqrt().unsqueeze(1), 1e-6, 1e-3), "");
}

TEST_F(EvaTest, StateDictFromThePlainModelMatchesThePeftModelPath) {
  auto x = low_rank(2, 64, 16, {6, 5, 1, 0.5}, 0.1);
  auto config = eva_config({"lin0", "lin1"}, 4, 2.0);
  Mlp model;
  auto before = peft::get_eva_state_dict(*model, config, {make_batch(x)}, forward_of(model));
  auto pm = peft::get_peft_model(model.ptr(), config);
  auto after = peft::get_eva_state_dict(*pm, {make_batch(x)}, forward_of(model));
  ASSERT_EQ(before.size(), after.size());
  for (auto& [name, t] : before) EXPECT_TRUE(torch::equal(t, after.at(name))) << name;
  peft::initialize_lora_eva_weights(*pm, before);
  EXPECT_TRUE(torch::equal(lora_tensor(*model->lin1, "lora_A.weight"),
                           before.at("lin1").to(torch::kFloat)));
}

TEST_F(EvaTest, ManyTargetsAreCondensedToSuffixes) {
  Stack model(12);
  auto x = low_rank(2, 32, 8, {4, 3, 2}, 0.2);
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"q", "v"}, 2, 1.0));
  peft::initialize_lora_eva_weights(*pm, {make_batch(x)}, forward_of(model));
  const auto& c = pm->peft_config("default");
  EXPECT_EQ(std::get<std::vector<std::string>>(*c.target_modules),
            (std::vector<std::string>{"q", "v"}));
  EXPECT_EQ(pm->targeted_module_names("default").size(), 24u);
}

TEST_F(EvaTest, SmallBatchesAreSkippedAndProgressIsPrinted) {
  One model;
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0"}, 4, 1.0));
  Batch tiny = make_batch(low_rank(1, 8, 16, {5, 3, 2, 1}, 0.05));
  tiny.attention_mask = torch::zeros({1, 8}, torch::kLong);
  tiny.attention_mask.slice(1, 0, 2).fill_(1);  // 2 tokens < 4 components
  peft::ScopedWarningCapture warnings;
  testing::internal::CaptureStderr();
  auto sd =
      peft::get_eva_state_dict(*pm, {tiny, make_batch(low_rank(2, 64, 16, {5, 3, 2, 1}, 0.05))},
                               forward_of(model), "default", {.show_progress = true});
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(warnings.contains("skipping SVD for lin0 because there are less than 4 examples"));
  EXPECT_NE(err.find("1/1 layers have converged"), std::string::npos) << err;
  EXPECT_EQ(rows_of(sd, "lin0"), 4);
}

TEST_F(EvaTest, BadInputsThrow) {
  One model;
  auto x = low_rank(1, 32, 16, {5, 3, 2, 1}, 0.05);
  auto fwd = forward_of(model);
  auto pm = peft::get_peft_model(model.ptr(), eva_config({"lin0"}, 4, 1.0));
  EXPECT_THROW(peft::get_eva_state_dict(*pm, {}, fwd), peft::ConfigError);
  EXPECT_THROW(peft::get_eva_state_dict(*pm, {make_batch(x)}, [](const Batch&) {}), peft::Error);
  Batch wrong_mask = make_batch(x);
  wrong_mask.attention_mask = torch::ones({1, 31}, torch::kLong);
  EXPECT_THROW(peft::get_eva_state_dict(*pm, {wrong_mask}, fwd), peft::ShapeMismatchError);
  EXPECT_TRUE(model->lin0->adapters_enabled());  // state restored after the failure

  // A state dict of the wrong width names the layer; nothing is changed.
  try {
    peft::initialize_lora_eva_weights(*pm, {{"lin0", torch::randn({3, 15})}});
    FAIL() << "expected ShapeMismatchError";
  } catch (const peft::ShapeMismatchError& e) {
    EXPECT_NE(std::string(e.what()).find("lin0"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->lin0->adapter_settings("default").r, 4);

  // Per-sequence labels cannot mask tokens: ignored with a warning.
  {
    peft::ScopedWarningCapture warnings;
    Batch cls = make_batch(x);
    cls.labels = torch::zeros({1}, torch::kLong);
    EXPECT_EQ(peft::get_eva_state_dict(*pm, {cls}, fwd).at("lin0").size(0), 4);
    EXPECT_TRUE(warnings.contains("are not per token"));
  }
  // A merged adapter cannot be re-created.
  pm->merge_adapter();
  EXPECT_THROW(peft::initialize_lora_eva_weights(*pm, {{"lin0", torch::randn({4, 16})}}),
               peft::Error);
  pm->unmerge_adapter();

  // round(r * rho) above in_features.
  auto c = pm->peft_config("default");
  c.eva_config->rho = 5.0;
  pm->update_peft_config("default", c);
  EXPECT_THROW(peft::get_eva_state_dict(*pm, {make_batch(x)}, fwd), peft::ConfigError);

  // Not an EVA adapter.
  One other;
  auto plain_config = eva_config({"lin0"}, 4, 1.0);
  plain_config.init_lora_weights.kind = peft::InitLoraWeights::Kind::kTrue;
  plain_config.eva_config.reset();
  auto pm2 = peft::get_peft_model(other.ptr(), plain_config);
  EXPECT_THROW(peft::initialize_lora_eva_weights(*pm2, {make_batch(x)}, forward_of(other)),
               peft::ConfigError);
  EXPECT_THROW(peft::get_eva_state_dict(*pm2, {make_batch(x)}, forward_of(other)),
               peft::ConfigError);
}

TEST_F(EvaTest, UnconvergedLayersFailAfterMaxEpochs) {
  One model;
  auto config = eva_config({"lin0"}, 4, 1.0);
  config.eva_config->tau = 1.0;
  auto pm = peft::get_peft_model(model.ptr(), config);
  std::vector<Batch> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(make_batch(torch::randn({1, 32, 16})));
  try {
    peft::get_eva_state_dict(*pm, batches, forward_of(model), "default", {.max_epochs = 1});
    FAIL() << "expected peft::Error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("have not converged"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->lin0->adapter_settings("default").r, 4);
}

}  // namespace
