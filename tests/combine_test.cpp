// add_weighted_adapter: a single adapter at weight 1 reproduces it, cat equals running the adapters together,
// and PEFT's errors (unknown adapter, mixed ranks for the linear family, missing density).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/combine.h"
#include "peft/error.h"
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

TEST(AddWeightedAdapter, OneAdapterAtWeightOneReproducesItForEveryType) {
  for (const std::string type : {"linear", "svd", "ties", "magnitude_prune", "cat"}) {
    Fixture f;
    peft::WeightedAdapterOptions o;
    o.combination_type = type;
    o.density = 1.0;
    peft::add_weighted_adapter(*f.pm, {"default"}, {1.0}, "copy", o);
    EXPECT_EQ(compare(f.mlp->lin0->get_delta_weight("copy"), f.mlp->lin0->get_delta_weight("default"), 1e-5), "") << type;
    EXPECT_EQ(compare(f.out({"copy"}), f.out({"default"}), 1e-5), "") << type;
  }
}

TEST(AddWeightedAdapter, CatEqualsRunningTheAdaptersTogether) {
  Fixture f(2);
  peft::WeightedAdapterOptions o;
  o.combination_type = "cat";
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
  o.combination_type = "linear";
  EXPECT_THROW(peft::add_weighted_adapter(*f.pm, {"default", "b"}, {1.0, 1.0}, "x", o), peft::ConfigError);
  EXPECT_THROW(peft::add_weighted_adapter(*f.pm, {"default", "nope"}, {1.0, 1.0}, "y", o), peft::AdapterNotFoundError);
  Fixture g;
  o.combination_type = "ties";
  EXPECT_THROW(peft::add_weighted_adapter(*g.pm, {"default", "b"}, {1.0, 1.0}, "z", o), peft::ConfigError);
  o.combination_type = "bogus";
  EXPECT_THROW(peft::add_weighted_adapter(*g.pm, {"default", "b"}, {1.0, 1.0}, "w", o), peft::ConfigError);
}

}  // namespace
