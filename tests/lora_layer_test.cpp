// Invariants of the adapter-ready layers, for every layer type (no fixtures needed).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "test_util.h"

using peft::InitLoraWeights;
using peft::nn::AdapterSettings;
using peft::nn::LoraLayerImpl;
using peft::test::compare;

namespace {

struct LayerCase {
  std::string name;
  std::function<std::shared_ptr<LoraLayerImpl>()> make;
  std::function<torch::Tensor()> input;
};

void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

std::vector<LayerCase> layer_cases() {
  return {
      {"Linear", [] { return std::make_shared<peft::nn::LinearImpl>(10, 6); },
       [] {
         return torch::randn({4, 3, 10});
       }},
      {"Conv1D", [] { return std::make_shared<peft::nn::Conv1DImpl>(6, 10); },
       [] {
         return torch::randn({4, 10});
       }},
      {"Embedding", [] { return std::make_shared<peft::nn::EmbeddingImpl>(12, 5, 0); },
       [] {
         return torch::randint(0, 12, {3, 7});
       }},
      {"Conv1d",
       [] {
         return std::make_shared<peft::nn::Conv1dImpl>(4, 6, std::vector<int64_t>{3},
                                                       peft::nn::ConvOptions{{1}, {1}});
       },
       [] {
         return torch::randn({2, 4, 9});
       }},
      {"Conv2d",
       [] {
         return std::make_shared<peft::nn::Conv2dImpl>(3, 6, std::vector<int64_t>{3, 3},
                                                       peft::nn::ConvOptions{{2}, {1}});
       },
       [] {
         return torch::randn({2, 3, 7, 7});
       }},
      {"Conv2d1x1",
       [] {
         return std::make_shared<peft::nn::Conv2dImpl>(3, 5, std::vector<int64_t>{1, 1});
       },
       [] {
         return torch::randn({2, 3, 4, 4});
       }},
      {"Conv3d",
       [] {
         return std::make_shared<peft::nn::Conv3dImpl>(2, 4, std::vector<int64_t>{3, 3, 3});
       },
       [] {
         return torch::randn({2, 2, 5, 5, 5});
       }},
      {"Conv3d11k",
       [] {
         return std::make_shared<peft::nn::Conv3dImpl>(2, 4, std::vector<int64_t>{1, 1, 2});
       },
       [] {
         return torch::randn({2, 2, 3, 3, 3});
       }},
  };
}

AdapterSettings settings(InitLoraWeights::Kind kind, int r = 4, double alpha = 8) {
  AdapterSettings s;
  s.r = r;
  s.lora_alpha = alpha;
  s.init_lora_weights.kind = kind;
  return s;
}

class LayerInvariants : public ::testing::TestWithParam<LayerCase> {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

TEST_P(LayerInvariants, ZeroBGivesBaseOutput) {
  auto layer = GetParam().make();
  auto x = GetParam().input();
  auto base = layer->forward_with_adapters(x);
  layer->update_layer("default", settings(InitLoraWeights::Kind::kTrue));
  EXPECT_EQ(compare(layer->forward_with_adapters(x), base, 1e-6), "");
}

TEST_P(LayerInvariants, NonZeroAdapterChangesOutput) {
  auto layer = GetParam().make();
  auto x = GetParam().input();
  auto base = layer->forward_with_adapters(x);
  layer->update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  EXPECT_GT((layer->forward_with_adapters(x) - base).abs().max().item<double>(), 1e-4);
}

TEST_P(LayerInvariants, MergedEqualsUnmergedAndUnmergeRestoresWeight) {
  auto layer = GetParam().make();
  auto x = GetParam().input();
  auto w0 = layer->weight().detach().clone();
  layer->update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  torch::NoGradGuard no_grad;
  auto unmerged = layer->forward_with_adapters(x);
  layer->merge();
  EXPECT_TRUE(layer->merged());
  EXPECT_EQ(compare(layer->forward_with_adapters(x), unmerged, 1e-5, 1e-5), "");
  EXPECT_EQ(compare(layer->weight() - w0, layer->get_delta_weight("default"), 1e-6, 1e-5), "");
  layer->unmerge();
  EXPECT_FALSE(layer->merged());
  EXPECT_EQ(compare(layer->weight(), w0, 1e-6), "");
  EXPECT_EQ(compare(layer->forward_with_adapters(x), unmerged, 1e-6), "");
}

TEST_P(LayerInvariants, DisabledGivesBaseOutput) {
  auto layer = GetParam().make();
  auto x = GetParam().input();
  auto base = layer->forward_with_adapters(x);
  layer->update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  layer->merge();
  layer->enable_adapters(false);
  EXPECT_FALSE(layer->merged());  // disabling unmerges
  EXPECT_EQ(compare(layer->forward_with_adapters(x), base, 1e-6), "");
  layer->enable_adapters(true);
  EXPECT_GT((layer->forward_with_adapters(x) - base).abs().max().item<double>(), 1e-4);
}

TEST_P(LayerInvariants, DeleteRemovesEveryParameterOfTheAdapter) {
  auto layer = GetParam().make();
  const auto before = layer->named_parameters().size();
  layer->update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  layer->update_layer("other", settings(InitLoraWeights::Kind::kFalse, 2));
  EXPECT_EQ(layer->named_parameters().size(), before + 4);
  layer->delete_adapter("other");
  EXPECT_EQ(layer->named_parameters().size(), before + 2);
  for (const auto& p : layer->named_parameters())
    EXPECT_EQ(p.key().find("other"), std::string::npos) << p.key();
  EXPECT_FALSE(layer->has_adapter("other"));
  layer->delete_adapter("default");
  EXPECT_EQ(layer->named_parameters().size(), before);
}

TEST_P(LayerInvariants, TwoActiveAdaptersAreSummed) {
  auto layer = GetParam().make();
  auto x = GetParam().input();
  torch::NoGradGuard no_grad;
  auto base = layer->forward_with_adapters(x);
  layer->update_layer("a", settings(InitLoraWeights::Kind::kFalse));
  layer->update_layer("b", settings(InitLoraWeights::Kind::kFalse, 2, 3));
  layer->set_active_adapters({"a"});
  auto ya = layer->forward_with_adapters(x);
  layer->set_active_adapters({"b"});
  auto yb = layer->forward_with_adapters(x);
  layer->set_active_adapters({"a", "b"});
  EXPECT_EQ(compare(layer->forward_with_adapters(x), ya + yb - base, 1e-5, 1e-5), "");
}

TEST_P(LayerInvariants, SafeMergeRejectsNaN) {
  auto layer = GetParam().make();
  layer->update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  auto w0 = layer->weight().detach().clone();
  {
    torch::NoGradGuard no_grad;
    for (auto& [k, t] : layer->adapter_tensors("default"))
      t.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_THROW(layer->merge(std::nullopt, /*safe_merge=*/true), peft::Error);
  EXPECT_FALSE(layer->merged());
  EXPECT_EQ(compare(layer->weight(), w0, 0.0), "");
}

TEST_P(LayerInvariants, ActiveAdapterIsTrainableInactiveIsFrozen) {
  auto layer = GetParam().make();
  layer->update_layer("default", settings(InitLoraWeights::Kind::kTrue));
  layer->update_layer("other", settings(InitLoraWeights::Kind::kTrue));
  for (auto& [k, t] : layer->adapter_tensors("default")) EXPECT_TRUE(t.requires_grad()) << k;
  for (auto& [k, t] : layer->adapter_tensors("other")) EXPECT_FALSE(t.requires_grad()) << k;
}

INSTANTIATE_TEST_SUITE_P(AllLayerTypes, LayerInvariants, ::testing::ValuesIn(layer_cases()),
                         [](const auto& test_info) { return test_info.param.name; });

TEST(LoraLinear, ScalingIsAlphaOverROrSqrtR) {
  peft::nn::LinearImpl layer(8, 8);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kTrue, 16, 3));
  EXPECT_DOUBLE_EQ(layer.scaling("default"), 3.0 / 16);
  auto s = settings(InitLoraWeights::Kind::kTrue, 16, 3);
  s.use_rslora = true;
  layer.update_layer("rs", s);
  EXPECT_DOUBLE_EQ(layer.scaling("rs"), 3.0 / 4);
  layer.set_scale("rs", 2.0);
  EXPECT_DOUBLE_EQ(layer.scaling("rs"), 1.5);
}

TEST(LoraLinear, DefaultInitIsKaimingUniformAAndZeroB) {
  torch::manual_seed(1);
  peft::nn::LinearImpl layer(400, 300);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kTrue, 64));
  auto t = layer.adapter_tensors("default");
  const double bound = 1.0 / std::sqrt(400.0);
  EXPECT_LE(t[0].second.abs().max().item<double>(), bound);
  EXPECT_GT(t[0].second.abs().max().item<double>(), 0.9 * bound);
  // U(-b, b) has std b / sqrt(3).
  EXPECT_NEAR(t[0].second.std().item<double>(), bound / std::sqrt(3.0), 0.05 * bound);
  EXPECT_EQ(t[1].second.abs().max().item<double>(), 0.0);
}

TEST(LoraLinear, GaussianInitHasStdOneOverR) {
  torch::manual_seed(2);
  peft::nn::LinearImpl layer(1000, 50);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kGaussian, 8));
  auto t = layer.adapter_tensors("default");
  EXPECT_NEAR(t[0].second.std().item<double>(), 1.0 / 8, 0.01);
  EXPECT_EQ(t[1].second.abs().max().item<double>(), 0.0);
}

TEST(LoraEmbedding, DefaultInitIsZeroANormalB) {
  torch::manual_seed(3);
  peft::nn::EmbeddingImpl layer(100, 200);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kTrue, 16));
  auto t = layer.adapter_tensors("default");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].first, "lora_embedding_A");
  EXPECT_EQ(t[0].second.sizes(), (std::vector<int64_t>{16, 100}));
  EXPECT_EQ(t[1].second.sizes(), (std::vector<int64_t>{200, 16}));
  EXPECT_EQ(t[0].second.abs().max().item<double>(), 0.0);
  EXPECT_NEAR(t[1].second.std().item<double>(), 1.0, 0.05);
}

TEST(LoraEmbedding, LoraBiasIsRejected) {
  peft::nn::EmbeddingImpl layer(10, 4);
  auto s = settings(InitLoraWeights::Kind::kTrue);
  s.lora_bias = true;
  EXPECT_THROW(layer.update_layer("default", s), peft::ConfigError);
}

TEST(LoraLinear, LoraBiasIsMergedIntoTheBaseBias) {
  torch::manual_seed(4);
  peft::nn::LinearImpl layer(6, 5);
  auto s = settings(InitLoraWeights::Kind::kFalse);
  s.lora_bias = true;
  layer.update_layer("default", s);
  auto x = torch::randn({3, 6});
  torch::NoGradGuard no_grad;
  auto y = layer.forward_with_adapters(x);
  auto b0 = layer.bias().clone();
  layer.merge();
  EXPECT_EQ(compare(layer.forward_with_adapters(x), y, 1e-5, 1e-5), "");
  EXPECT_GT((layer.bias() - b0).abs().max().item<double>(), 0.0);
  layer.unmerge();
  EXPECT_EQ(compare(layer.bias(), b0, 1e-6), "");
}

TEST(LoraLinear, LoraBiasWithoutBaseBiasWarnsThenMergeFails) {
  peft::nn::LinearImpl layer(6, 5, /*bias=*/false);
  auto s = settings(InitLoraWeights::Kind::kFalse);
  s.lora_bias = true;
  peft::ScopedWarningCapture warnings;
  layer.update_layer("default", s);
  EXPECT_TRUE(warnings.contains("lora_bias"));
  EXPECT_THROW(layer.merge(), peft::Error);
}

TEST(LoraConv, RankMustBeDivisibleByGroups) {
  peft::nn::Conv2dImpl conv(4, 4, {3, 3}, peft::nn::ConvOptions{{}, {}, {}, 2});
  peft::ScopedWarningCapture warnings;
  EXPECT_NO_THROW(conv.update_layer("a", settings(InitLoraWeights::Kind::kTrue, 2)));
  EXPECT_THROW(conv.update_layer("b", settings(InitLoraWeights::Kind::kTrue, 1)),
               peft::ConfigError);
  EXPECT_THROW(conv.merge(std::vector<std::string>{"a"}), peft::UnsupportedError);
}

TEST(LoraLinear, ForwardIsThreadSafe) {
  torch::manual_seed(5);
  peft::nn::LinearImpl layer(32, 16);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  auto x = torch::randn({64, 32});
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = layer.forward_with_adapters(x);
  }
  std::vector<std::thread> threads;
  std::vector<torch::Tensor> outs(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      torch::NoGradGuard no_grad;
      for (int k = 0; k < 20; ++k) outs[static_cast<size_t>(i)] = layer.forward_with_adapters(x);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& o : outs) EXPECT_EQ(compare(o, expected, 0.0), "");
}

TEST(LoraLinear, HalfPrecisionDeltaMatchesFloat) {
  torch::manual_seed(6);
  peft::nn::LinearImpl layer(8, 4);
  layer.update_layer("default", settings(InitLoraWeights::Kind::kFalse));
  auto d32 = layer.get_delta_weight("default");
  {
    torch::NoGradGuard no_grad;
    for (auto& [k, t] : layer.adapter_tensors("default")) t.set_data(t.to(torch::kBFloat16));
  }
  auto d16 = layer.get_delta_weight("default");
  EXPECT_EQ(d16.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(compare(d16.to(torch::kFloat), d32, 2e-2, 2e-2), "");
}

}  // namespace
