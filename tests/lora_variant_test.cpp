// The LoRA variant seam (PEFT's LoraVariant / resolve_lora_variant): which variant an adapter gets
// from its settings and layer kind, the combinations that are refused, and that the layer's
// forward, merge, unmerge, delta and saved tensors go through the variant's hooks. Also the
// auxiliary modules that are now their own classes (TrainableTokensImpl, ModulesToSaveImpl) and the
// typed init data.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/linear.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/param.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/lora/variant.h"
#include "peft/lora/variants/arrow.h"
#include "test_util.h"

using peft::nn::AdapterSettings;
using peft::test::compare;

namespace {

AdapterSettings plain(int r = 2) {
  AdapterSettings s;
  s.r = r;
  s.lora_alpha = 4;
  s.init_lora_weights.kind =
      peft::InitLoraWeights::Kind::kFalse;  // non-zero B: the adapter changes outputs
  return s;
}

std::string name_of(const peft::nn::LoraLayerImpl& layer, const std::string& adapter) {
  const auto v = layer.variant(adapter);
  return v ? v->name() : "plain";
}

TEST(LoraVariant, ResolvedPerAdapterFromTheSettings) {
  peft::nn::LinearImpl lin(6, 4);
  lin.update_layer("plain", plain());
  AdapterSettings dora = plain();
  dora.use_dora = true;
  lin.update_layer("dora", dora);
  AdapterSettings alora = plain();
  alora.alora_invocation_tokens = std::vector<int64_t>{1, 2};
  lin.update_layer("alora", alora);
  AdapterSettings arrow = plain();
  arrow.arrow_config = peft::ArrowConfig{};
  lin.update_layer("router", arrow);
  EXPECT_EQ(name_of(lin, "plain"), "plain");
  EXPECT_EQ(name_of(lin, "dora"), "DoRA");
  EXPECT_EQ(name_of(lin, "alora"), "aLoRA");
  EXPECT_EQ(name_of(lin, "router"), "Arrow");
  // Re-creating an adapter without the switch drops its variant (and DoRA's magnitude with it).
  lin.update_layer("dora", plain());
  EXPECT_EQ(name_of(lin, "dora"), "plain");
  EXPECT_FALSE(lin.adapter_tensor("dora", "lora_magnitude_vector").defined());
  lin.delete_adapter("alora");
  EXPECT_EQ(lin.variant("alora"), nullptr);
}

TEST(LoraVariant, UnsupportedCombinationsAreRefusedBeforeAnythingIsCreated) {
  peft::nn::LinearImpl lin(6, 4);
  AdapterSettings both = plain();
  both.use_dora = true;
  both.alora_invocation_tokens = std::vector<int64_t>{3};
  try {
    lin.update_layer("x", both);
    FAIL() << "aLoRA + DoRA accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "Invalid or unsupported variant combination: ('alora_invocation_tokens', "
                  "'use_dora')"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(lin.has_adapter("x"));
  EXPECT_TRUE(lin.named_parameters().size() == 2u);  // weight, bias: nothing of "x" was registered

  peft::nn::Conv2dImpl conv(2, 3, {3, 3});
  AdapterSettings arrow = plain();
  arrow.arrow_config = peft::ArrowConfig{};
  EXPECT_THROW(conv.update_layer("router", arrow), peft::ConfigError);
  AdapterSettings alora = plain();
  alora.alora_invocation_tokens = std::vector<int64_t>{1};
  EXPECT_THROW(conv.update_layer("a", alora), peft::UnsupportedError);
  AdapterSettings dora_bias = plain();
  dora_bias.use_dora = true;
  dora_bias.lora_bias = true;
  EXPECT_THROW(conv.update_layer("d", dora_bias), peft::ConfigError);
  EXPECT_TRUE(conv.adapter_names().empty());

  peft::nn::ParamLoraImpl param(torch::randn({3, 5}), "w", false);
  AdapterSettings dora = plain();
  dora.use_dora = true;
  EXPECT_THROW(param.update_layer("d", dora), peft::ConfigError);
}

// The layer's merge / unmerge / delta call the variant's hooks: DoRA's merged weight is m / ||W +
// dW|| (W + dW), not W + dW, and unmerge returns W exactly through the cached norm.
TEST(LoraVariant, MergeAndUnmergeGoThroughTheVariant) {
  torch::manual_seed(0);
  peft::nn::LinearImpl lin(6, 4);
  AdapterSettings dora = plain();
  dora.use_dora = true;
  lin.update_layer("d", dora);
  lin.set_active_adapters({"d"});
  {
    torch::NoGradGuard no_grad;
    lin.adapter_tensor("d", "lora_magnitude_vector").mul_(1.5);
  }
  const at::Tensor W = lin.weight().detach().clone();
  const at::Tensor delta = lin.get_delta_weight("d");
  EXPECT_EQ(compare(delta, lin.lora_delta_weight("d"), 0), "");  // DoRA keeps plain LoRA's delta
  const at::Tensor x = torch::randn({3, 6});
  at::Tensor unmerged;
  {
    torch::NoGradGuard no_grad;
    unmerged = lin.forward(x);
  }
  lin.merge();
  const at::Tensor m = lin.adapter_tensor("d", "lora_magnitude_vector");
  const at::Tensor expected =
      (m / at::linalg_vector_norm(W + delta, 2, {1})).unsqueeze(1) * (W + delta);
  EXPECT_EQ(compare(lin.weight(), expected, 1e-6), "");
  {
    torch::NoGradGuard no_grad;
    EXPECT_EQ(compare(lin.forward(x), unmerged, 1e-5), "");
  }
  lin.unmerge();
  EXPECT_EQ(compare(lin.weight(), W, 1e-6), "");
  // Variants that cannot merge refuse before anything changes.
  AdapterSettings alora = plain();
  alora.alora_invocation_tokens = std::vector<int64_t>{1};
  lin.update_layer("a", alora);
  EXPECT_THROW(lin.merge(std::vector<std::string>{"d", "a"}), peft::UnsupportedError);
  EXPECT_FALSE(lin.merged());
  EXPECT_EQ(compare(lin.weight(), W, 1e-6), "");
}

TEST(LoraVariant, VariantTensorsAreSavedWithTheAdapterAndRegisteredUnderPeftsNames) {
  peft::nn::EmbeddingImpl emb(7, 3);
  AdapterSettings dora = plain();
  dora.use_dora = true;
  emb.update_layer("d", dora);
  std::vector<std::string> keys;
  for (const auto& [k, t] : emb.adapter_tensors("d")) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"lora_embedding_A", "lora_embedding_B",
                                            "lora_magnitude_vector"}));
  std::vector<std::string> params;
  for (const auto& p : emb.named_parameters()) params.push_back(p.key());
  EXPECT_NE(std::find(params.begin(), params.end(), "lora_magnitude_vector.d.weight"),
            params.end());
  emb.delete_adapter("d");
  EXPECT_EQ(emb.named_parameters().size(), 1u);  // the magnitude went with the adapter
}

TEST(LoraVariant, MixedBatchRefusalComesFromTheVariant) {
  auto lin = std::make_shared<peft::nn::LinearImpl>(6, 4);
  AdapterSettings dora = plain();
  dora.use_dora = true;
  lin->update_layer("d", dora);
  lin->eval();
  EXPECT_EQ(lin->variant("d")->mixed_batch_refusal(),
            "Cannot pass `adapter_names` when DoRA is enabled");
  peft::nn::ForwardContext context;
  context.adapter_names = std::vector<std::string>{"d", "__base__"};
  peft::nn::ForwardContextGuard guard(context);
  EXPECT_THROW(lin->forward(torch::randn({2, 6})), peft::ConfigError);
}

TEST(TrainableTokens, SubstituteMergeAndUnmergeTheChosenRows) {
  peft::nn::TrainableTokensImpl tokens;
  at::Tensor weight = torch::randn({6, 3});
  const at::Tensor original = weight.clone();
  tokens.add("t", {1, 4}, weight);
  ASSERT_TRUE(tokens.has("t"));
  EXPECT_EQ(tokens.indices("t"), (std::vector<int64_t>{1, 4}));
  {
    torch::NoGradGuard no_grad;
    tokens.delta("t").fill_(7.0);
  }
  const at::Tensor w = tokens.substituted(weight, {"t"});
  EXPECT_TRUE(at::equal(w.index_select(0, torch::tensor({1, 4})), torch::full({2, 3}, 7.0f)));
  EXPECT_TRUE(at::equal(w.index_select(0, torch::tensor({0, 2, 3, 5})),
                        original.index_select(0, torch::tensor({0, 2, 3, 5}))));
  EXPECT_FALSE(tokens.substituted(weight, {"other"}).defined());
  tokens.merge(weight, {"t"});
  EXPECT_TRUE(tokens.merged());
  EXPECT_TRUE(at::equal(weight, w));
  tokens.unmerge(weight);
  EXPECT_TRUE(at::equal(weight, original));
  EXPECT_THROW(tokens.add("u", {6}, weight), peft::ConfigError);
  tokens.add("u", {4}, weight);
  EXPECT_THROW(tokens.substituted(weight, {"t", "u"}), peft::ConfigError);  // both claim row 4
  EXPECT_EQ(tokens.named_parameters().size(), 2u);  // trainable_tokens_delta.t and .u
}

TEST(ModulesToSave, OneCopyPerAdapterAndOnlyOneActive) {
  peft::nn::ModulesToSaveImpl copies;
  const at::Tensor w = torch::randn({4, 3}), b = torch::randn({4});
  copies.add("a", w, b);
  copies.add("b", w, b, /*shared_weight=*/copies.copy("a")->weight);
  EXPECT_TRUE(copies.copy("b")->weight.is_same(copies.copy("a")->weight));
  EXPECT_FALSE(copies.copy("a")->weight.is_same(w));  // a clone, not the base tensor
  copies.set_trainable({"a"}, true);
  EXPECT_TRUE(copies.copy("a")->bias.requires_grad());
  EXPECT_FALSE(copies.copy("b")->bias.requires_grad());
  EXPECT_THROW(copies.set_trainable({"a", "b"}, true), peft::Error);
  EXPECT_THROW(copies.add("c", w, b, torch::randn({2, 2})), peft::ShapeMismatchError);
}

TEST(LayerInitData, TypedCordaAndLoraGaDataFeedTheirInits) {
  torch::manual_seed(0);
  peft::nn::LinearImpl lin(5, 4);
  AdapterSettings corda = plain();
  corda.init_lora_weights.kind = peft::InitLoraWeights::Kind::kCorda;
  EXPECT_THROW(lin.update_layer("c", corda), peft::ConfigError);  // no decomposition attached
  auto [U, S, Vh] = at::linalg_svd(lin.weight().detach(), false);
  lin.init_data().corda =
      peft::nn::LayerInitData::Corda{U.slice(1, 0, 2), S.slice(0, 0, 2), Vh.slice(0, 0, 2).t()};
  const at::Tensor before = lin.weight().detach().clone();
  lin.update_layer("c", corda);
  // CorDA moves the top components into the adapter: residual + s B A = the original weight.
  EXPECT_EQ(compare(lin.weight() + lin.get_delta_weight("c"), before, 1e-5), "");
  lin.init_data() = {};
  EXPECT_FALSE(lin.init_data().corda.has_value());
  EXPECT_FALSE(lin.init_data().loraga_grad.defined());
}

TEST(InitLoraWeights, OneAnswerForWhichInitsChangeTheBaseAndWhichNeedData) {
  using K = peft::InitLoraWeights::Kind;
  for (K k : {K::kPissa, K::kOlora, K::kCorda, K::kLoraGa, K::kLoftq}) {
    EXPECT_TRUE(peft::InitLoraWeights{.kind = k}.mutates_base()) << static_cast<int>(k);
  }
  for (K k : {K::kTrue, K::kFalse, K::kGaussian, K::kEva, K::kOrthogonal}) {
    EXPECT_FALSE(peft::InitLoraWeights{.kind = k}.mutates_base()) << static_cast<int>(k);
  }
  for (K k : {K::kEva, K::kCorda, K::kLoraGa})
    EXPECT_TRUE(peft::InitLoraWeights{.kind = k}.needs_data());
  for (K k : {K::kTrue, K::kPissa, K::kLoftq, K::kOrthogonal})
    EXPECT_FALSE(peft::InitLoraWeights{.kind = k}.needs_data());
}

}  // namespace
