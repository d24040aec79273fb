// QALoRA on GPTQ layers (PEFT 0.20's QALoraLinearVariant via GPTQLoraLinear): lora_A of width
// in / qalora_group_size fed the group-pooled input, forward against a hand computation, B = 0
// gives the base output, save -> load bit-identical, training moves the loss, PEFT's refusals
// (merging on GPTQ, DoRA on GPTQ, in_features not divisible) and use_qalora off GPTQ layers being
// plain LoRA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "gptq_pack.h"
#include "peft/error.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "peft/quant/quantized_weight.h"
#include "test_util.h"

using peft::test::compare;
using peft::test::message_of;

namespace {

// Replaces the layer's float weight by its 4-bit GPTQ form (round to nearest, groups of 16).
void make_gptq(peft::nn::LinearImpl& layer) {
  const auto codes = peft::test::rtn_quantize(layer.weight().detach(), 4, 16, false);
  const auto p = peft::test::pack_gptq(codes.q, codes.z, codes.scales, codes.g_idx, 4, true);
  peft::quant::QuantizedGptq q;
  q.qweight = p.qweight;
  q.qzeros = p.qzeros;
  q.scales = p.scales;
  q.g_idx = p.g_idx;
  q.options.group_size = 16;
  layer.set_quantized_weight(peft::quant::QuantizedWeight::from_gptq(q, at::kFloat));
}

// An MLP 64 -> 32 -> 16 with GPTQ Linear layers.
peft::test::MLP gptq_mlp() {
  torch::manual_seed(4);
  peft::test::MLP mlp(64, 32, 16);
  make_gptq(*mlp->lin0);
  make_gptq(*mlp->lin1);
  return mlp;
}

peft::LoraConfig qalora_config(int group = 8) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.use_qalora = true;
  c.qalora_group_size = group;
  return c;
}

TEST(QaLora, PooledInputThroughANarrowLoraAMatchesTheHandComputation) {
  auto mlp = gptq_mlp();
  auto pm = peft::get_peft_model(mlp.ptr(), qalora_config());
  auto& l0 = *mlp->lin0;
  auto& l1 = *mlp->lin1;
  // lora_A (r, in / group_size); lora_B (out, r) zero.
  EXPECT_EQ(l0.adapter_tensor("default", "lora_A.weight").sizes(), (at::IntArrayRef{4, 8}));
  EXPECT_EQ(l1.adapter_tensor("default", "lora_A.weight").sizes(), (at::IntArrayRef{4, 4}));
  // PEFT: a fresh nn.Linear(in / group_size, r): kaiming_uniform_(a = sqrt(5)), bound 1 / sqrt(8).
  EXPECT_LE(l0.adapter_tensor("default", "lora_A.weight").abs().max().item<double>(),
            1.0 / std::sqrt(8.0));
  mlp->eval();
  const at::Tensor x = torch::randn({3, 5, 64});
  torch::NoGradGuard no_grad;
  // B = 0: the base output, exactly.
  const at::Tensor base = [&] {
    auto guard = pm->disable_adapter();
    return mlp->forward(x);
  }();
  EXPECT_TRUE(at::equal(mlp->forward(x), base));
  l0.adapter_tensor("default", "lora_B.weight").normal_(0, 0.5);
  l1.adapter_tensor("default", "lora_B.weight").normal_(0, 0.5);
  const auto by_hand = [](peft::nn::LinearImpl& l, const at::Tensor& in, int64_t g) {
    const at::Tensor A = l.adapter_tensor("default", "lora_A.weight");
    const at::Tensor B = l.adapter_tensor("default", "lora_B.weight");
    const int64_t groups = l.in_features() / g;
    // x.view(N, in / g, g).mean(2) * (in / g) @ A^T @ B^T * scaling
    const at::Tensor pooled = in.reshape({-1, groups, g}).mean(2) * static_cast<double>(groups);
    const at::Tensor delta = at::matmul(at::matmul(pooled, A.t()), B.t()) * l.scaling("default");
    std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end() - 1);
    shape.push_back(l.out_features());
    return at::linear(in, l.quantized_weight()->dequantize(), l.bias()) + delta.reshape(shape);
  };
  const at::Tensor expected = by_hand(l1, at::relu(by_hand(l0, x, 8)), 8);
  EXPECT_EQ(compare(mlp->forward(x), expected, 1e-5), "");
}

TEST(QaLora, MergingIsRefusedAsPeftDoes) {
  auto mlp = gptq_mlp();
  auto pm = peft::get_peft_model(mlp.ptr(), qalora_config());
  // PEFT's _check_merge_allowed refuses any merge on a GPTQ model ...
  EXPECT_NE(message_of([&] {
              pm->merge_adapter();
            }).find("Cannot merge LORA layers when the model is gptq quantized"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              pm->merge_and_unload();
            }).find("Cannot merge LORA layers when the model is gptq quantized"),
            std::string::npos);
  // ... and QALoRA's variant refuses a delta weight even on a dequantized base.
  EXPECT_NE(message_of([&] {
              mlp->lin0->get_delta_weight("default");
            }).find("QALoRA for GPTQ layers does not support 'get_delta_weight'"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              pm->merge_and_unload(false, std::nullopt,
                                   peft::PeftModel::QuantizedMerge::kDequantize);
            }).find("QALoRA for GPTQ layers does not support"),
            std::string::npos);
  EXPECT_FALSE(mlp->lin0->merged());
}

TEST(QaLora, PlainLoraOnGptqMergesOnlyIntoADequantizedBase) {
  auto mlp = gptq_mlp();
  peft::LoraConfig c = qalora_config();
  c.use_qalora = false;
  auto pm = peft::get_peft_model(mlp.ptr(), c);
  EXPECT_EQ(mlp->lin0->adapter_tensor("default", "lora_A.weight").sizes(),
            (at::IntArrayRef{4, 64}));
  {
    torch::NoGradGuard g;
    mlp->lin0->adapter_tensor("default", "lora_B.weight").normal_(0, 0.5);
  }
  mlp->eval();
  const at::Tensor x = torch::randn({4, 64});
  torch::NoGradGuard g;
  const at::Tensor y = mlp->forward(x);
  EXPECT_THROW(pm->merge_adapter(), peft::UnsupportedError);
  EXPECT_EQ(compare(mlp->forward(x), y, 0), "");  // nothing changed
  pm->merge_and_unload(false, std::nullopt, peft::PeftModel::QuantizedMerge::kDequantize);
  EXPECT_FALSE(mlp->lin0->is_quantized());
  EXPECT_EQ(compare(mlp->forward(x), y, 1e-5), "");
}

TEST(QaLora, SavedAndLoadedBitIdenticalAndTrains) {
  auto mlp = gptq_mlp();
  auto pm = peft::get_peft_model(mlp.ptr(), qalora_config());
  mlp->train();
  // A few SGD steps on a fixed regression target: the loss falls and only the adapters move.
  const at::Tensor x = torch::randn({32, 64}), target = torch::randn({32, 16});
  std::vector<at::Tensor> params;
  for (auto& p : mlp->parameters())
    if (p.requires_grad()) params.push_back(p);
  EXPECT_EQ(params.size(), 4u);  // lora_A and lora_B of two layers
  torch::optim::SGD opt(params, 0.05);
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    const at::Tensor loss = (mlp->forward(x) - target).pow(2).mean();
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first);
  peft::test::TempDir dir;
  pm->save_pretrained(dir.str());
  auto other = gptq_mlp();
  auto loaded = peft::PeftModel::from_pretrained(other.ptr(), dir.str());
  EXPECT_EQ(peft::test::state_dict_difference(pm->get_peft_model_state_dict("default"),
                                              loaded->get_peft_model_state_dict("default")),
            "");
  mlp->eval();
  other->eval();
  torch::NoGradGuard g;
  EXPECT_TRUE(at::equal(mlp->forward(x), other->forward(x)));
}

TEST(QaLora, RefusalsAndPlainLoraOffGptq) {
  {
    auto mlp = gptq_mlp();
    EXPECT_NE(message_of([&] { peft::get_peft_model(mlp.ptr(), qalora_config(12)); })
                  .find("requires `module.in_features` (64) to bedivisible by "
                        "'qalora_group_size' (12)"),
              std::string::npos);
  }
  {
    auto mlp = gptq_mlp();
    peft::LoraConfig c = qalora_config();
    c.use_dora = true;
    EXPECT_NE(message_of([&] {
                peft::get_peft_model(mlp.ptr(), c);
              }).find("GPTQLoraLinear does not support DoRA yet, please set it to False"),
              std::string::npos);
    EXPECT_EQ(mlp->lin0->adapter_names().size(), 0u);  // rolled back
  }
  {
    auto mlp = gptq_mlp();
    peft::LoraConfig c = qalora_config();
    c.use_qalora = false;
    c.alora_invocation_tokens = std::vector<int64_t>{1, 2};
    EXPECT_THROW(peft::get_peft_model(mlp.ptr(), c), peft::UnsupportedError);
  }
  {
    // PEFT: use_qalora on a float Linear is plain LoRA.
    torch::manual_seed(0);
    peft::test::MLP mlp(64, 32, 16);
    auto pm = peft::get_peft_model(mlp.ptr(), qalora_config());
    EXPECT_EQ(mlp->lin0->adapter_tensor("default", "lora_A.weight").sizes(),
              (at::IntArrayRef{4, 64}));
    EXPECT_EQ(mlp->lin0->variant("default"), nullptr);
  }
}

}  // namespace
