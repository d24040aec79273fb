// DoRA (use_dora) on Linear, GPT-2 Conv1D, Embedding and Conv2d: the magnitude at init, DoRA's
// forward against its closed form, merge / unmerge, save / load, gradients, and the refusals PEFT
// makes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;

namespace {

struct NetImpl : torch::nn::Module {
  NetImpl() {
    emb = register_module("emb", peft::nn::Embedding(30, 12));
    lin = register_module("lin", peft::nn::Linear(12, 16));
    c1d = register_module("c1d", peft::nn::Conv1D(8, 16));  // GPT-2 Conv1D: nf = 8 out, nx = 16 in
    conv = register_module("conv", peft::nn::Conv2d(2, 3, std::vector<int64_t>{3, 3}));
  }
  torch::Tensor forward(const torch::Tensor& ids) { return c1d(torch::relu(lin(emb(ids)))); }
  torch::Tensor conv_forward(const torch::Tensor& img) { return conv(img); }
  peft::nn::Embedding emb{nullptr};
  peft::nn::Linear lin{nullptr};
  peft::nn::Conv1D c1d{nullptr};
  peft::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Net);

LoraConfig dora_config(bool random_b = true) {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.use_dora = true;
  c.target_modules = std::vector<std::string>{"emb", "lin", "c1d", "conv"};
  c.init_lora_weights.kind =
      random_b ? peft::InitLoraWeights::Kind::kFalse : peft::InitLoraWeights::Kind::kTrue;
  return c;
}

struct Inputs {
  torch::Tensor ids = torch::randint(0, 30, {3, 5});
  torch::Tensor img = torch::randn({2, 2, 6, 6});
};

TEST(Dora, DefaultInitIsANoOpAndTheMagnitudeIsTheWeightNorm) {
  torch::manual_seed(0);
  Net net;
  net->eval();
  Inputs in;
  const at::Tensor base = net->forward(in.ids).detach(),
                   base_img = net->conv_forward(in.img).detach();
  auto pm = peft::get_peft_model(net.ptr(), dora_config(false));
  EXPECT_EQ(compare(net->forward(in.ids), base, 1e-6), "");
  EXPECT_EQ(compare(net->conv_forward(in.img), base_img, 1e-6), "");
  // Layouts of PEFT's lora_magnitude_vector: Linear (out,), Conv1D (out,), Embedding (dim,), Conv2d
  // (1, out, 1, 1).
  EXPECT_EQ(compare(net->lin->adapter_tensor("default", "lora_magnitude_vector"),
                    at::linalg_vector_norm(net->lin->weight(), 2, {1}), 1e-6),
            "");
  EXPECT_EQ(compare(net->c1d->adapter_tensor("default", "lora_magnitude_vector"),
                    at::linalg_vector_norm(net->c1d->weight(), 2, {0}), 1e-6),
            "");
  EXPECT_EQ(compare(net->emb->adapter_tensor("default", "lora_magnitude_vector"),
                    at::linalg_vector_norm(net->emb->weight(), 2, {0}), 1e-6),
            "");
  EXPECT_EQ(net->conv->adapter_tensor("default", "lora_magnitude_vector").sizes(),
            (std::vector<int64_t>{1, 3, 1, 1}));
}

TEST(Dora, LinearForwardIsTheClosedForm) {
  torch::manual_seed(1);
  Net net;
  net->eval();
  auto pm = peft::get_peft_model(net.ptr(), dora_config());
  torch::NoGradGuard no_grad;
  auto& l = *net->lin;
  {  // a trained magnitude differs from the norm
    l.adapter_tensor("default", "lora_magnitude_vector").mul_(1.3);
  }
  at::Tensor x = torch::randn({4, 12});
  at::Tensor W = l.weight() + l.get_delta_weight("default");
  at::Tensor g =
      l.adapter_tensor("default", "lora_magnitude_vector") / at::linalg_vector_norm(W, 2, {1});
  at::Tensor expected = at::linear(x, W) * g + l.bias();  // b + g * (W + s B A) x
  EXPECT_EQ(compare(net->lin->forward(x), expected, 1e-5), "");
}

TEST(Dora, MergeThenUnmergeRestoresEveryWeightAndMergedOutputsMatch) {
  torch::manual_seed(2);
  Net net;
  net->eval();
  Inputs in;
  auto pm = peft::get_peft_model(net.ptr(), dora_config());
  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : peft::nn::lora_layers(*net))
    layer->adapter_tensor("default", "lora_magnitude_vector").mul_(0.9);
  std::map<std::string, at::Tensor> before;
  for (auto& p : net->named_parameters()) before[p.key()] = p.value().clone();
  const at::Tensor out = net->forward(in.ids).clone(), out_img = net->conv_forward(in.img).clone();
  pm->merge_adapter();
  EXPECT_EQ(compare(net->forward(in.ids), out, 1e-5), "");
  EXPECT_EQ(compare(net->conv_forward(in.img), out_img, 1e-5), "");
  EXPECT_GT((net->lin->weight() - before.at("lin.weight")).abs().max().item<double>(), 1e-3);
  pm->unmerge_adapter();
  for (auto& p : net->named_parameters())
    EXPECT_EQ(compare(p.value(), before.at(p.key()), 1e-5), "") << p.key();
  pm->merge_and_unload(/*safe_merge=*/true);
  EXPECT_EQ(compare(net->forward(in.ids), out, 1e-5), "");
  EXPECT_EQ(compare(net->conv_forward(in.img), out_img, 1e-5), "");
}

TEST(Dora, SaveLoadIsBitExactWithPeftsKeys) {
  peft::test::TempDir dir;
  torch::manual_seed(3);
  Net net;
  net->eval();
  Inputs in;
  auto pm = peft::get_peft_model(net.ptr(), dora_config());
  {
    torch::NoGradGuard no_grad;
    net->lin->adapter_tensor("default", "lora_magnitude_vector").add_(0.25);
  }
  const at::Tensor out = net->forward(in.ids).detach();
  pm->save_pretrained(dir.str());
  auto file = peft::io::load_safetensors(dir.str("adapter_model.safetensors"));
  for (const char* key :
       {"base_model.model.lin.lora_magnitude_vector", "base_model.model.c1d.lora_magnitude_vector",
        "base_model.model.emb.lora_magnitude_vector",
        "base_model.model.conv.lora_magnitude_vector"}) {
    EXPECT_TRUE(file.count(key)) << key;
  }
  torch::manual_seed(3);
  Net fresh;
  fresh->eval();
  auto loaded = peft::PeftModel::from_pretrained(fresh.ptr(), dir.str());
  EXPECT_TRUE(at::equal(fresh->lin->adapter_tensor("default", "lora_magnitude_vector"),
                        net->lin->adapter_tensor("default", "lora_magnitude_vector")));
  EXPECT_TRUE(at::equal(fresh->forward(in.ids), out));
}

TEST(Dora, MagnitudeAndFactorsTrainAndTheNormIsDetached) {
  torch::manual_seed(4);
  Net net;
  net->train();
  LoraConfig c = dora_config();
  c.target_modules = std::vector<std::string>{"lin"};
  auto pm = peft::get_peft_model(net.ptr(), c);
  at::Tensor x = torch::randn({4, 12});
  net->lin->forward(x).pow(2).sum().backward();
  for (auto& [k, t] : net->lin->adapter_tensors("default")) {
    ASSERT_TRUE(t.grad().defined()) << k;
    EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0) << k;
  }
  EXPECT_FALSE(net->lin->weight().grad().defined());
}

TEST(Dora, DropoutRecomputesTheBaseOnTheDroppedInputInTraining) {
  torch::manual_seed(5);
  Net net;
  LoraConfig c = dora_config();
  c.target_modules = std::vector<std::string>{"lin"};
  c.lora_dropout = 0.5;
  auto pm = peft::get_peft_model(net.ptr(), c);
  net->eval();
  at::Tensor x = torch::randn({4, 12});
  torch::NoGradGuard no_grad;
  const at::Tensor eval_out = net->lin->forward(x);
  net->train();
  torch::manual_seed(9);
  const at::Tensor train_out = net->lin->forward(x);
  // Closed form of PEFT's training path: result + (g - 1) * W drop(x) + g * s * B A drop(x).
  torch::manual_seed(9);
  at::Tensor xd = at::dropout(x, 0.5, true);
  auto& l = *net->lin;
  at::Tensor g = l.adapter_tensor("default", "lora_magnitude_vector") /
                 at::linalg_vector_norm(l.weight() + l.get_delta_weight("default"), 2, {1});
  at::Tensor expected = at::linear(x, l.weight(), l.bias()) + (g - 1) * at::linear(xd, l.weight()) +
                        g * at::linear(xd, l.get_delta_weight("default"));
  EXPECT_EQ(compare(train_out, expected, 1e-5), "");
  EXPECT_GT((train_out - eval_out).abs().max().item<double>(), 1e-4);
}

TEST(Dora, LoraBiasWithDoraIsRefused) {
  LoraConfig c = dora_config();
  c.lora_bias = true;
  c.target_modules = std::vector<std::string>{"lin"};
  EXPECT_THROW(peft::get_peft_model(Net().ptr(), c), peft::ConfigError);
}

}  // namespace
