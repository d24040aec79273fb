// reduce_intruder_dimension: lambda = 1 reproduces the old update on every layer kind, a
// constructed intruder is found and its singular value scaled by lambda, no intruders copy A and B
// exactly, the new adapter is active, unknown adapters fail before anything changes, and the
// logging sink sees PEFT's messages.
#include "peft/intruders.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;

namespace {

// One layer of every kind; "lin" is tall (32 x 8), so its left singular vectors leave 24 directions
// uncovered.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    lin = register_module("lin", peft::nn::Linear(8, 32, /*bias=*/false));
    c1d = register_module("c1d", peft::nn::Conv1D(12, 5));
    emb = register_module("emb", peft::nn::Embedding(20, 6));
    conv = register_module("conv", peft::nn::Conv2d(3, 6, std::vector<int64_t>{3, 3}));
  }
  peft::nn::Linear lin{nullptr};
  peft::nn::Conv1D c1d{nullptr};
  peft::nn::Embedding emb{nullptr};
  peft::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Net);

LoraConfig config(std::vector<std::string> targets) {
  LoraConfig c;
  c.r = 2;
  c.lora_alpha = 4;  // scaling 2
  c.target_modules = std::move(targets);
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  return c;
}

// Every factor of `adapter` in `layer` set to N(0, scale^2).
void randomize(peft::nn::LoraLayerImpl& layer, const std::string& adapter, double scale) {
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : layer.adapter_tensors(adapter)) t.copy_(torch::randn_like(t) * scale);
}

at::Tensor factor(peft::nn::LoraLayerImpl& layer, const std::string& adapter,
                  const std::string& key) {
  for (auto& [k, t] : layer.adapter_tensors(adapter)) {
    if (k == key) return t;
  }
  return {};
}

peft::IntruderOptions quiet() {
  peft::IntruderOptions o;
  o.logging_sink = nullptr;
  return o;
}

std::vector<std::shared_ptr<peft::nn::LoraLayerImpl>> layers(const Net& net) {
  return {net->lin.ptr(), net->c1d.ptr(), net->emb.ptr(), net->conv.ptr()};
}

// "lin" with an exact intruder: W = U S V^T (32 x 8); the adapter replaces W's smallest component
// s7 u7 v7^T by sigma u v7^T with u orthogonal to every column of W. W + dW then has the exact SVD
// {sigma u v7, s_j u_j v_j (j < 7)} and the top direction u has cosine 0 with U_base.
struct IntruderCase {
  Net net;
  std::shared_ptr<peft::PeftModel> pm;
  at::Tensor S, u, v;
  double sigma = 0;
  IntruderCase() {
    torch::manual_seed(1);
    pm = peft::get_peft_model(net.ptr(), config({"lin"}));
    torch::NoGradGuard no_grad;
    auto& lin = *net->lin;
    lin.weight().copy_(torch::randn({32, 8}));
    auto [U, S_, Vh] = torch::linalg_svd(lin.weight(), false);
    S = S_;
    v = Vh[7];
    at::Tensor x = torch::randn({32});
    u = x - torch::matmul(U, torch::matmul(U.t(), x));
    u = u / u.norm();
    sigma = 10.0 * S[0].item<double>();
    const at::Tensor column = (sigma * u - S[7] * U.select(1, 7)) / lin.scaling("default");
    factor(lin, "default", "lora_A.weight").zero_().select(0, 0).copy_(v);
    factor(lin, "default", "lora_B.weight").zero_().select(1, 0).copy_(column);
  }
};

TEST(ReduceIntruderDimension, LambdaOneReproducesTheOldUpdateOnEveryLayerKind) {
  torch::manual_seed(0);
  Net net;
  peft::ScopedWarningCapture warnings;  // fan_in_fan_out corrected for c1d / lin, as PEFT warns
  auto pm = peft::get_peft_model(net.ptr(), config({"lin", "c1d", "emb", "conv"}));
  for (auto& l : layers(net)) randomize(*l, "default", 0.5);
  peft::IntruderOptions o = quiet();
  o.mitigation_lambda = 1.0;
  o.threshold_epsilon =
      2.0;  // every top-k direction counts as an intruder: the full path runs on every layer
  peft::reduce_intruder_dimension(*pm, o);
  for (auto& l : layers(net)) {
    EXPECT_EQ(compare(l->get_delta_weight("intruder_reduced"), l->get_delta_weight("default"), 1e-5,
                      1e-5),
              "")
        << peft::nn::to_string(l->kind());
    for (auto& [key, t] : l->adapter_tensors("intruder_reduced")) {
      EXPECT_EQ(t.sizes(), factor(*l, "default", key).sizes()) << key;
    }
  }
}

TEST(ReduceIntruderDimension, ConstructedIntruderIsScaledByLambda) {
  IntruderCase c;
  std::vector<std::string> log;
  peft::IntruderOptions o;
  o.logging_sink = [&](const std::string& m) { log.push_back(m); };
  peft::reduce_intruder_dimension(*c.pm, o);  // PEFT's defaults: top_k 10, eps 0.5, lambda 0.75
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "base_model.model.lin: Intruders: 1");
  auto& lin = *c.net->lin;
  torch::NoGradGuard no_grad;
  const at::Tensor merged = lin.weight() + lin.get_delta_weight("intruder_reduced");
  const at::Tensor S_new = torch::linalg_svdvals(merged);
  // {0.75 sigma, s_0 .. s_6}: only the intruder's singular value changed.
  const at::Tensor expected = torch::cat({torch::tensor({0.75 * c.sigma}), c.S.narrow(0, 0, 7)});
  EXPECT_EQ(compare(S_new, expected, 1e-4, 1e-5), "");
  // The update itself: the old one minus a quarter of the intruder component.
  const at::Tensor expected_delta =
      lin.get_delta_weight("default") - 0.25 * c.sigma * torch::outer(c.u, c.v);
  EXPECT_EQ(compare(lin.get_delta_weight("intruder_reduced"), expected_delta, 1e-4, 1e-5), "");
}

TEST(ReduceIntruderDimension, NoIntrudersCopiesTheFactorsExactly) {
  {  // threshold 0: no cosine is below it.
    IntruderCase c;
    peft::IntruderOptions o = quiet();
    o.threshold_epsilon = 0.0;
    peft::reduce_intruder_dimension(*c.pm, o);
    for (const char* key : {"lora_A.weight", "lora_B.weight"}) {
      EXPECT_TRUE(torch::equal(factor(*c.net->lin, "intruder_reduced", key),
                               factor(*c.net->lin, "default", key)));
    }
  }
  {  // a small update keeps every top direction aligned with the base's: nothing changes on any
     // layer kind.
    torch::manual_seed(2);
    Net net;
    peft::ScopedWarningCapture warnings;
    auto pm = peft::get_peft_model(net.ptr(), config({"lin", "c1d", "emb", "conv"}));
    for (auto& l : layers(net)) randomize(*l, "default", 1e-3);
    std::vector<std::string> log;
    peft::IntruderOptions o;
    o.logging_sink = [&](const std::string& m) { log.push_back(m); };
    peft::reduce_intruder_dimension(*pm, o);
    for (auto& l : layers(net)) {
      for (auto& [key, t] : l->adapter_tensors("intruder_reduced")) {
        EXPECT_TRUE(torch::equal(t, factor(*l, "default", key)))
            << peft::nn::to_string(l->kind()) << " " << key;
      }
    }
    EXPECT_EQ(log, (std::vector<std::string>{
                       "base_model.model.lin: No intruders", "base_model.model.c1d: No intruders",
                       "base_model.model.emb: No intruders", "base_model.model.conv: No intruders",
                       "Enabling new adapter intruder_reduced"}));
  }
}

TEST(ReduceIntruderDimension, NewAdapterIsActiveAndKeepsTheOldConfig) {
  IntruderCase c;
  peft::IntruderOptions o = quiet();
  o.new_adapter_name = "mitigated";
  peft::reduce_intruder_dimension(*c.pm, o);
  EXPECT_EQ(c.pm->active_adapters(), std::vector<std::string>{"mitigated"});
  EXPECT_EQ(c.pm->peft_config("mitigated").r, c.pm->peft_config("default").r);
  EXPECT_EQ(c.pm->peft_config("mitigated").lora_alpha, c.pm->peft_config("default").lora_alpha);
  // The model's output now uses the new adapter.
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({3, 8});
  const at::Tensor expected =
      torch::matmul(x, (c.net->lin->weight() + c.net->lin->get_delta_weight("mitigated")).t());
  EXPECT_EQ(compare(c.net->lin->forward(x), expected, 1e-4, 1e-5), "");
}

TEST(ReduceIntruderDimension, UnknownOrClashingAdapterNamesFailBeforeChangingAnything) {
  IntruderCase c;
  peft::IntruderOptions o = quiet();
  o.old_adapter_name = "nope";
  EXPECT_THROW(peft::reduce_intruder_dimension(*c.pm, o), peft::AdapterNotFoundError);
  EXPECT_EQ(c.pm->adapter_names(), std::vector<std::string>{"default"});
  o.old_adapter_name = "default";
  o.new_adapter_name = "default";
  EXPECT_THROW(peft::reduce_intruder_dimension(*c.pm, o), peft::ConfigError);
  o.new_adapter_name = "x";
  o.top_k = -1;
  EXPECT_THROW(peft::reduce_intruder_dimension(*c.pm, o), peft::ConfigError);
  EXPECT_EQ(c.pm->adapter_names(), std::vector<std::string>{"default"});
  EXPECT_EQ(c.pm->active_adapters(), std::vector<std::string>{"default"});
}

TEST(ReduceIntruderDimension, DefaultSinkPrintsToStdoutAndNullIsSilent) {
  {
    IntruderCase c;
    testing::internal::CaptureStdout();
    peft::reduce_intruder_dimension(*c.pm);
    const std::string out = testing::internal::GetCapturedStdout();
    EXPECT_EQ(out, "base_model.model.lin: Intruders: 1\nEnabling new adapter intruder_reduced\n");
  }
  {
    IntruderCase c;
    testing::internal::CaptureStdout();
    peft::reduce_intruder_dimension(*c.pm, quiet());
    EXPECT_EQ(testing::internal::GetCapturedStdout(), "");
  }
}

TEST(ReduceIntruderDimension, Bfloat16BaseWeightsAreUpcastForTheSvd) {
  IntruderCase c;
  c.net->to(torch::kBFloat16);
  peft::IntruderOptions o = quiet();
  o.mitigation_lambda = 1.0;
  o.threshold_epsilon = 2.0;
  peft::reduce_intruder_dimension(*c.pm, o);
  auto& lin = *c.net->lin;
  EXPECT_EQ(lin.weight().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(compare(lin.get_delta_weight("intruder_reduced").to(torch::kFloat),
                    lin.get_delta_weight("default").to(torch::kFloat), 0.1, 0.02),
            "");
}

}  // namespace
