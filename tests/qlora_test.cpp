// QLoRA: LoRA on a quantized peft::nn::Linear — forward / backward against dequantise-then-matmul,
// merging onto the quantized base (requantize or keep float), a quantized model's adapter round
// trip, and LoftQ on it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/init/loftq_model.h"
#include "peft/io/safetensors.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "peft/quant/quantized_weight.h"
#include "test_util.h"

namespace {

using peft::quant::QuantizeOptions;
using peft::quant::QuantMethod;

QuantizeOptions opts(QuantMethod m, bool dq = false) {
  QuantizeOptions o;
  o.method = m;
  o.double_quant = dq;
  return o;
}

peft::LoraConfig lin_config(bool random = true) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  if (random) c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  return c;
}

// The reference: the same model with float layers holding the dequantized weights.
std::shared_ptr<peft::test::MLPImpl> dequantized_copy(peft::test::MLPImpl& q) {
  auto ref = std::make_shared<peft::test::MLPImpl>();
  torch::NoGradGuard no_grad;
  ref->lin0->weight().copy_(q.lin0->float_weight());
  ref->lin1->weight().copy_(q.lin1->float_weight());
  ref->lin0->bias().copy_(q.lin0->bias());
  ref->lin1->bias().copy_(q.lin1->bias());
  return ref;
}

class QLoraMethods : public ::testing::TestWithParam<QuantMethod> {};

TEST_P(QLoraMethods, ForwardAndBackwardMatchDequantizeThenMatmul) {
  torch::manual_seed(0);
  auto model = std::make_shared<peft::test::MLPImpl>();
  model->lin0->quantize(opts(GetParam()));
  model->lin1->quantize(opts(GetParam()));
  ASSERT_TRUE(model->lin0->is_quantized());
  // The packed data takes the "weight" parameter, as bitsandbytes' Params4bit / Int8Params.
  EXPECT_EQ(model->lin0->weight().scalar_type(),
            GetParam() == QuantMethod::kInt8 ? at::kChar : at::kByte);
  auto ref = dequantized_copy(*model);
  auto pm = peft::get_peft_model(model, lin_config());
  auto pr = peft::get_peft_model(ref, lin_config());
  {
    torch::NoGradGuard no_grad;
    for (auto name : {"lin0", "lin1"}) {
      for (auto key : {"lora_A.weight", "lora_B.weight"}) {
        auto layer = std::string(name) == "lin0" ? ref->lin0 : ref->lin1;
        auto src = std::string(name) == "lin0" ? model->lin0 : model->lin1;
        layer->adapter_tensor("default", key).copy_(src->adapter_tensor("default", key));
      }
    }
  }
  const at::Tensor x = torch::randn({3, 10}, torch::requires_grad());
  const at::Tensor xr = x.detach().clone().requires_grad_(true);
  at::Tensor y = model->forward(x);
  at::Tensor yr = ref->forward(xr);
  // int8 quantizes the activations too (LLM.int8), so it is compared loosely; 4-bit is
  // dequantise-then-matmul.
  const double tol = GetParam() == QuantMethod::kInt8 ? 5e-2 : 1e-5;
  EXPECT_EQ(peft::test::compare(y, yr, tol, tol), "");
  (y * y).sum().backward();
  (yr * yr).sum().backward();
  EXPECT_EQ(peft::test::compare(x.grad(), xr.grad(), tol * 10, tol * 10), "");
  for (auto key : {"lora_A.weight", "lora_B.weight"}) {
    at::Tensor g = model->lin0->adapter_tensor("default", key).grad();
    at::Tensor gr = ref->lin0->adapter_tensor("default", key).grad();
    ASSERT_TRUE(g.defined()) << key;
    EXPECT_EQ(peft::test::compare(g, gr, tol * 10, tol * 10), "") << key;
  }
  EXPECT_FALSE(model->lin0->weight().grad().defined());
}

INSTANTIATE_TEST_SUITE_P(All, QLoraMethods,
                         ::testing::Values(QuantMethod::kNF4, QuantMethod::kFP4,
                                           QuantMethod::kInt8),
                         [](const auto& p) { return peft::quant::to_string(p.param); });

TEST(QLora, BiasFreeLayerTrainsThroughTheQuantizedWeight) {
  // Llama's projections have no bias: the autograd path must not need one.
  torch::manual_seed(7);
  peft::nn::Linear lin(16, 8, /*bias=*/false);
  const at::Tensor W = lin->weight().detach().clone();
  lin->quantize(opts(QuantMethod::kNF4));
  const at::Tensor Wq = lin->float_weight();
  const at::Tensor x = torch::randn({2, 3, 16}, torch::requires_grad());
  at::Tensor y = lin->forward(x);
  y.pow(2).sum().backward();
  const at::Tensor xr = x.detach().clone().requires_grad_(true);
  at::linear(xr, Wq).pow(2).sum().backward();
  EXPECT_EQ(peft::test::compare(x.grad(), xr.grad(), 1e-5, 1e-5), "");
  EXPECT_GT((Wq - W).abs().max().item<double>(), 0.0);  // it was quantized
}

TEST(QLora, ZeroBGivesTheQuantizedBaseOutput) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  auto model = std::make_shared<peft::test::MLPImpl>();
  model->lin0->quantize(opts(QuantMethod::kNF4, true));
  model->lin1->quantize(opts(QuantMethod::kNF4, true));
  const at::Tensor x = torch::randn({5, 10});
  const at::Tensor base = model->forward(x);
  auto pm = peft::get_peft_model(model, lin_config(/*random=*/false));
  EXPECT_TRUE(at::equal(model->forward(x), base));
}

TEST(QLora, MergeRequantizesOrKeepsFloat) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  const at::Tensor x = torch::randn({5, 10});
  for (auto mode : {peft::PeftModel::QuantizedMerge::kRequantize,
                    peft::PeftModel::QuantizedMerge::kDequantize}) {
    auto model = std::make_shared<peft::test::MLPImpl>();
    model->lin0->quantize(opts(QuantMethod::kNF4));
    model->lin1->quantize(opts(QuantMethod::kNF4));
    auto pm = peft::get_peft_model(model, lin_config());
    const at::Tensor adapted = model->forward(x);
    // The exact merged weight: dequantized W + s B A.
    const at::Tensor exact = model->lin0->float_weight() + model->lin0->get_delta_weight("default");
    peft::ScopedWarningCapture warnings;
    pm->merge_and_unload(false, std::nullopt, mode);
    if (mode == peft::PeftModel::QuantizedMerge::kRequantize) {
      EXPECT_TRUE(model->lin0->is_quantized());
      // bitsandbytes' merge: the exact merged weight, quantized again with the layer's settings.
      const at::Tensor requantized =
          peft::quant::QuantizedWeight::quantize(exact, opts(QuantMethod::kNF4))->dequantize();
      EXPECT_TRUE(at::equal(model->lin0->float_weight(), requantized));
      EXPECT_GT((requantized - exact).abs().max().item<double>(),
                0.0);  // rounding, hence PEFT's warning
      EXPECT_TRUE(warnings.contains("rounding errors"));
    } else {
      EXPECT_FALSE(model->lin0->is_quantized());
      EXPECT_EQ(peft::test::compare(model->lin0->weight(), exact, 1e-6, 1e-6), "");
      EXPECT_EQ(peft::test::compare(model->forward(x), adapted, 1e-5, 1e-5), "");
    }
  }
}

TEST(QLora, MergeUnmergeKeepsOutputsClose) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  auto model = std::make_shared<peft::test::MLPImpl>();
  model->lin0->quantize(opts(QuantMethod::kNF4));
  const at::Tensor x = torch::randn({4, 10});
  auto pm = peft::get_peft_model(model, lin_config());
  const at::Tensor adapted = model->forward(x);
  const at::Tensor W = model->lin0->float_weight();
  const at::Tensor d = model->lin0->get_delta_weight("default");
  auto requant = [](const at::Tensor& w) {
    return peft::quant::QuantizedWeight::quantize(w, opts(QuantMethod::kNF4))->dequantize();
  };
  pm->merge_adapter();
  EXPECT_TRUE(at::equal(model->lin0->float_weight(), requant(W + d)));
  pm->unmerge_adapter();
  // Unmerge dequantizes, subtracts and quantizes again: back near, not exactly at, the original
  // quantization.
  EXPECT_TRUE(at::equal(model->lin0->float_weight(), requant(requant(W + d) - d)));
  EXPECT_EQ(peft::test::compare(model->forward(x), adapted, 0.5, 0.0), "");
}

TEST(QLora, DeviceMovesKeepThePackedWeight) {
  torch::manual_seed(4);
  auto model = std::make_shared<peft::test::MLPImpl>();
  model->lin0->quantize(opts(QuantMethod::kNF4));
  const at::Tensor packed = model->lin0->weight().clone();
  model->to(at::kFloat);
  model->to(torch::Device(torch::kCPU));
  EXPECT_EQ(model->lin0->weight().scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(model->lin0->weight(), packed));
  model->to(at::kBFloat16);  // the bias and adapters move; the packed weight keeps its integers
  EXPECT_TRUE(at::equal(model->lin0->weight(), packed));
  EXPECT_EQ(model->lin0->bias().scalar_type(), at::kBFloat16);
}

TEST(QLora, LoftQReducesTheQuantizationError) {
  torch::manual_seed(5);
  peft::test::TempDir dir;
  auto model = std::make_shared<peft::test::MLPImpl>(64, 48, 32);
  // The original float weights, as the file replace_lora_weights_loftq reads.
  std::map<std::string, at::Tensor> original;
  for (auto& item : model->named_parameters()) original[item.key()] = item.value().detach().clone();
  peft::io::save_safetensors(dir.str("model.safetensors"), original);
  model->lin0->quantize(opts(QuantMethod::kNF4));
  model->lin1->quantize(opts(QuantMethod::kNF4));
  peft::LoraConfig c = lin_config(/*random=*/false);
  c.r = 8;
  c.lora_alpha = 8;  // scaling 1: LoftQ's factors are not divided by the scaling
  auto pm = peft::get_peft_model(model, c);
  std::vector<std::string> seen;
  auto reports = peft::replace_lora_weights_loftq(
      *pm, dir.str("model.safetensors"), "default", [&](peft::PeftModel&, const std::string& name) {
        seen.push_back(name);
        return name == "lin0";  // keep lin0, roll back lin1
      });
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(seen, (std::vector<std::string>{"lin0", "lin1"}));
  for (const auto& r : reports) {
    EXPECT_DOUBLE_EQ(r.error_before, r.error_quant);  // B = 0 before
    EXPECT_LT(r.error_after, r.error_quant * 0.95) << r.module;
  }
  // lin0 kept: ||W - (Q + B A)|| is the reported error; lin1 rolled back: B is zero again.
  torch::NoGradGuard no_grad;
  const at::Tensor W0 = original.at("lin0.weight");
  const at::Tensor approx = model->lin0->float_weight() + model->lin0->get_delta_weight("default");
  EXPECT_NEAR((W0 - approx).to(at::kDouble).norm().item<double>(), reports[0].error_after, 1e-5);
  EXPECT_TRUE(reports[0].kept);
  EXPECT_FALSE(reports[1].kept);
  EXPECT_EQ(model->lin1->adapter_tensor("default", "lora_B.weight").abs().sum().item<double>(),
            0.0);
  // No quantized layer: PEFT's error.
  auto plain = std::make_shared<peft::test::MLPImpl>();
  auto pp = peft::get_peft_model(plain, lin_config());
  EXPECT_THROW(peft::replace_lora_weights_loftq(*pp, dir.str("model.safetensors")),
               peft::ConfigError);
}

TEST(QLora, LoftQInitOnAFloatModel) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(6);
  auto model = std::make_shared<peft::test::MLPImpl>(64, 48, 32);
  const at::Tensor W = model->lin0->weight().clone();
  peft::LoraConfig c;
  c.r = 8;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kLoftq;
  c.loftq_config = peft::LoftQConfig{4, 2};
  auto pm = peft::get_peft_model(model, c);
  // The base now holds Q (NF4 values in float): quantizing it again is exact.
  const at::Tensor Q = model->lin0->weight().clone();
  auto q = peft::quant::QuantizedWeight::quantize(Q, opts(QuantMethod::kNF4));
  const double err_q = (Q - q->dequantize()).norm().item<double>();
  const double err_lora =
      (W - (Q + model->lin0->get_delta_weight("default"))).norm().item<double>();
  const double err_plain =
      (W - peft::quant::QuantizedWeight::quantize(W, opts(QuantMethod::kNF4))->dequantize())
          .norm()
          .item<double>();
  EXPECT_LT(err_q, 1e-5 * Q.norm().item<double>());
  EXPECT_LT(err_lora, err_plain * 0.95);
}

}  // namespace
