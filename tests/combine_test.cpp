// add_weighted_adapter: every type's path reproduces an adapter combined with a zero one, one
// adapter is combined as "linear" (PEFT's rewrite, announced), cat equals running the adapters
// together, and PEFT's errors (unknown adapter, mixed ranks for the linear family, missing density,
// unknown type spelling).
#include "peft/combine.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;

namespace {

using MLP = peft::test::MLP;

LoraConfig config(int r, double alpha) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  return c;
}

struct Fixture {
  MLP mlp;
  std::shared_ptr<peft::PeftModel> pm;
  at::Tensor x;
  Fixture(int r2 = 4) {
    torch::manual_seed(0);
    x = torch::randn({5, 10});
    pm = peft::get_peft_model(mlp.ptr(), config(4, 8));
    pm->add_adapter("b", config(r2, 3));
  }
  at::Tensor out(const std::vector<std::string>& active) {
    torch::NoGradGuard no_grad;
    pm->set_adapters(active, true);
    return mlp->forward(x);
  }
};

// Each type's own path (two adapters, so PEFT's one-adapter rewrite to "linear" does not apply):
// adding an all-zero adapter of the same rank changes nothing, so the result reproduces the first
// adapter. alpha = r keeps the SVD family's double scaling at 1, and r = 2 lets the SVD types keep
// the whole delta of lin1 (20 -> 2); density 1 keeps every entry (DARE rescales by 1 / density =
// 1).
TEST(AddWeightedAdapter, AnAdapterPlusAZeroAdapterReproducesItForEveryType) {
  for (const std::string& name : peft::combination_type_spellings()) {
    SCOPED_TRACE(name);
    torch::manual_seed(0);
    MLP mlp;
    auto pm = peft::get_peft_model(mlp.ptr(), config(2, 2));  // r = min(in, out) of lin1 (20 -> 2)
    pm->add_adapter("zero", config(2, 2));
    for (auto& [lname, layer] : peft::nn::lora_layers(*mlp)) {
      torch::NoGradGuard no_grad;
      for (auto& [key, t] : layer->adapter_tensors("zero")) t.zero_();
    }
    peft::WeightedAdapterOptions o;
    o.combination_type = peft::parse_combination_type(name);
    o.density = 1.0;
    o.svd_rank = 2;
    peft::ScopedWarningCapture quiet;  // density 1 warns that nothing is pruned
    peft::add_weighted_adapter(*pm, {"default", "zero"}, {1.0, 1.0}, "copy", o);
    EXPECT_EQ(
        compare(mlp->lin0->get_delta_weight("copy"), mlp->lin0->get_delta_weight("default"), 1e-5),
        "");
    EXPECT_EQ(
        compare(mlp->lin1->get_delta_weight("copy"), mlp->lin1->get_delta_weight("default"), 1e-5),
        "");
  }
}

// PEFT combines one adapter as "linear" whatever the type says; here that rewrite is announced.
TEST(AddWeightedAdapter, OneAdapterIsCombinedAsLinearWithAWarning) {
  Fixture f;
  peft::WeightedAdapterOptions o;
  o.combination_type = peft::CombinationType::kTiesSvd;  // no density: not needed once rewritten
  peft::ScopedWarningCapture warnings;
  peft::add_weighted_adapter(*f.pm, {"default"}, {1.0}, "copy", o);
  EXPECT_TRUE(warnings.contains("combination_type=\"ties_svd\" is not used"))
      << warnings.messages().size();
  EXPECT_EQ(compare(f.mlp->lin0->get_delta_weight("copy"), f.mlp->lin0->get_delta_weight("default"),
                    1e-5),
            "");
  EXPECT_EQ(compare(f.out({"copy"}), f.out({"default"}), 1e-5), "");
}

TEST(AddWeightedAdapter, CombinationTypesParseWithPeftSpellings) {
  for (const std::string& name : peft::combination_type_spellings()) {
    EXPECT_EQ(peft::to_string(peft::parse_combination_type(name)), name);
  }
  EXPECT_EQ(peft::combination_type_spellings().size(), 11u);
  std::string message;
  try {
    peft::parse_combination_type("bogus");
  } catch (const peft::ConfigError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("Invalid combination_type: bogus"), std::string::npos) << message;
  EXPECT_NE(message.find("\"magnitude_prune_svd\""), std::string::npos) << message;
  EXPECT_TRUE(peft::needs_density(peft::CombinationType::kDareTiesSvd));
  EXPECT_FALSE(peft::needs_density(peft::CombinationType::kSvd));
  EXPECT_FALSE(peft::needs_density(peft::CombinationType::kCat));
  EXPECT_TRUE(peft::is_svd_type(peft::CombinationType::kMagnitudePruneSvd));
  EXPECT_FALSE(peft::is_svd_type(peft::CombinationType::kTies));
}

TEST(AddWeightedAdapter, CatEqualsRunningTheAdaptersTogether) {
  Fixture f(2);
  peft::WeightedAdapterOptions o;
  o.combination_type = peft::CombinationType::kCat;
  peft::add_weighted_adapter(*f.pm, {"default", "b"}, {1.0, 1.0}, "both", o);
  EXPECT_EQ(f.pm->peft_config("both").r, 6);
  EXPECT_EQ(f.pm->peft_config("both").lora_alpha, 6);
  EXPECT_EQ(compare(f.out({"both"}), f.out({"default", "b"}), 1e-5), "");
  // The new adapter is not activated, and an existing name is silently ignored (PEFT).
  peft::add_weighted_adapter(*f.pm, {"default"}, {2.0}, "both", o);
  EXPECT_EQ(f.pm->peft_config("both").r, 6);
}

TEST(AddWeightedAdapter, ErrorsNameTheProblem) {
  Fixture f(2);
  peft::WeightedAdapterOptions o;
  o.combination_type = peft::CombinationType::kLinear;
  EXPECT_THROW(peft::add_weighted_adapter(*f.pm, {"default", "b"}, {1.0, 1.0}, "x", o),
               peft::ConfigError);
  EXPECT_THROW(peft::add_weighted_adapter(*f.pm, {"default", "nope"}, {1.0, 1.0}, "y", o),
               peft::AdapterNotFoundError);
  Fixture g;
  o.combination_type = peft::CombinationType::kTies;  // no density
  EXPECT_THROW(peft::add_weighted_adapter(*g.pm, {"default", "b"}, {1.0, 1.0}, "z", o),
               peft::ConfigError);
  EXPECT_EQ(g.pm->adapter_names().size(), 2u);  // refused before anything was added
}

}  // namespace
