// Many adapters in one batch (adapter_names): every row equals the row run alone with its adapter,
// for Linear (2-D and 3-D inputs, mixed ranks, lora_bias), Embedding, Conv2d, modules_to_save and
// trainable tokens, with the gathered kernel and PEFT's sub-batch loop; generate() per prompt;
// PEFT's errors; the kernel's cache follows in-place weight updates.
#include "peft/lora/mixed_batch.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/generate.h"
#include "peft/lora/conv.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::nn::MixedBatchGuard;
using peft::nn::MixedBatchKernel;
using peft::test::compare;
using Names = std::vector<std::string>;

namespace {

// Embedding -> Linear (3-D) -> Conv2d over a (batch, 1, seq, hidden) view -> Linear head (2-D) ->
// classifier.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    emb = register_module("emb", peft::nn::Embedding(30, 12));
    lin = register_module("lin", peft::nn::Linear(12, 12));
    conv = register_module("conv", peft::nn::Conv2d(1, 2, std::vector<int64_t>{3, 3},
                                                    peft::nn::ConvOptions{.padding = {1, 1}}));
    head = register_module("head", peft::nn::Linear(2 * 12, 8));
    cls = register_module("cls", peft::nn::Linear(8, 3));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto h = torch::tanh(lin(emb(ids)));    // (b, s, 12)
    auto c = conv(h.unsqueeze(1));          // (b, 2, s, 12)
    auto pooled = c.mean(2).flatten(1);     // (b, 24)
    return cls(torch::relu(head(pooled)));  // (b, 3)
  }
  peft::nn::Embedding emb{nullptr};
  peft::nn::Linear lin{nullptr};
  peft::nn::Conv2d conv{nullptr};
  peft::nn::Linear head{nullptr};
  peft::nn::Linear cls{nullptr};
};
TORCH_MODULE(Net);

LoraConfig config(int r, double alpha, bool bias = false) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::vector<std::string>{"emb", "lin", "conv", "head"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  c.lora_bias = bias;
  if (bias)
    c.target_modules =
        std::vector<std::string>{"lin", "conv", "head"};  // Embedding has no lora_bias
  return c;
}

struct Fixture {
  Net net;
  std::shared_ptr<peft::PeftModel> pm;
  at::Tensor ids;
  Fixture() {
    torch::manual_seed(0);
    ids = torch::randint(30, {7, 5}, torch::kLong);
    pm = peft::get_peft_model(net.ptr(), config(4, 8));
    pm->add_adapter("b", config(2, 3, /*bias=*/true));
    auto c = config(6, 6);
    c.target_modules = std::vector<std::string>{"lin", "head"};  // absent from emb and conv
    c.modules_to_save = std::vector<std::string>{"cls"};
    pm->add_adapter("c", c);
    net->eval();
    torch::NoGradGuard no_grad;
    for (auto& p : net->named_parameters()) {
      if (p.key().find("modules_to_save") != std::string::npos)
        p.value().add_(torch::randn_like(p.value()) * 0.1);
    }
  }
  // Row i run alone with names[i] active (or with the adapters disabled for "__base__").
  at::Tensor per_row(const Names& names) {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> rows;
    for (size_t i = 0; i < names.size(); ++i) {
      at::Tensor x = ids.narrow(0, static_cast<int64_t>(i), 1);
      if (names[i] == "__base__") {
        auto off = pm->disable_adapter();
        rows.push_back(net->forward(x));
      } else {
        pm->set_adapter(names[i]);
        rows.push_back(net->forward(x));
      }
    }
    pm->set_adapter("default");
    return torch::cat(rows);
  }
  at::Tensor mixed(const Names& names, MixedBatchKernel kernel) {
    torch::NoGradGuard no_grad;
    MixedBatchGuard guard(*net, names, kernel);
    return net->forward(ids);
  }
};

TEST(MixedBatch, EveryRowEqualsItsAdapterAloneForEveryLayerKindAndKernel) {
  Fixture f;
  const Names names = {"b", "__base__", "default", "c", "b", "default", "c"};
  const at::Tensor expected = f.per_row(names);
  for (auto kernel : {MixedBatchKernel::kGathered, MixedBatchKernel::kLoop}) {
    const at::Tensor got = f.mixed(names, kernel);
    EXPECT_EQ(compare(got, expected, 1e-5, 1e-5), "")
        << (kernel == MixedBatchKernel::kLoop ? "loop" : "gathered");
  }
  // The rows really differ by adapter (the test could fail).
  EXPECT_GT((expected[0] - expected[1]).abs().max().item<double>(), 1e-3);
  EXPECT_GT((expected[2] - expected[3]).abs().max().item<double>(), 1e-3);
}

TEST(MixedBatch, OneAdapterForAllRowsEqualsTheActiveAdapter) {
  Fixture f;
  for (const std::string name :
       {"b", "default", "c"}) {  // lora_bias; Embedding + Conv; modules_to_save
    at::Tensor expected;
    {
      torch::NoGradGuard no_grad;
      f.pm->set_adapter(name);
      expected = f.net->forward(f.ids);
      f.pm->set_adapter("default");
    }
    EXPECT_EQ(compare(f.mixed(Names(7, name), MixedBatchKernel::kGathered), expected, 1e-5, 1e-5),
              "")
        << name;
  }
}

TEST(MixedBatch, TrainableTokensFollowTheirRows) {
  Fixture f;
  auto t = config(2, 2);
  t.target_modules = std::vector<std::string>{"lin"};
  t.trainable_token_indices = std::vector<std::pair<std::string, std::vector<int64_t>>>{
      {"emb", std::vector<int64_t>{1, 4, 9}}};
  f.pm->add_adapter("tok", t);
  {
    torch::NoGradGuard no_grad;
    f.net->emb->trainable_tokens()->delta("tok").add_(
        1.0);                                         // the rows differ from the base embedding
    for (int64_t i = 0; i < 7; ++i) f.ids[i][0] = 4;  // every row holds a trainable token
  }
  f.net->eval();
  const Names names = {"tok", "default", "__base__", "tok", "c", "tok", "b"};
  const at::Tensor expected = f.per_row(names);
  EXPECT_EQ(compare(f.mixed(names, MixedBatchKernel::kGathered), expected, 1e-5, 1e-5), "");
  const Names base = {"__base__", "default", "__base__", "__base__", "c", "__base__", "b"};
  EXPECT_GT((expected[0] - f.per_row(base)[0]).abs().max().item<double>(), 1e-4);
}

TEST(MixedBatch, UnevenGroupsFallBackAndStillMatch) {
  Fixture f;
  // Six rows of one adapter and single rows of others: padding would triple the rows, so the layer
  // loops.
  const Names names = {"default", "default", "b", "default", "default", "default", "c"};
  EXPECT_EQ(compare(f.mixed(names, MixedBatchKernel::kGathered), f.per_row(names), 1e-5, 1e-5), "");
}

// A Linear 16 -> 24 with adapters a0..a<n-1> of ranks 2, 4, 6, ..., B != 0, a lora_bias on a<bias>.
peft::nn::Linear linear_with_adapters(int n, int bias) {
  peft::nn::Linear lin(16, 24);
  for (int i = 0; i < n; ++i) {
    peft::nn::AdapterSettings s;
    s.r = 2 + 2 * i;
    s.lora_alpha = 4 + i;
    s.lora_bias = i == bias;
    s.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
    lin->update_layer("a" + std::to_string(i), s);
  }
  lin->eval();
  return lin;
}

// The layer's forward of x with a mixed batch of `names` through `kernel`.
at::Tensor run_mixed(peft::nn::Linear& lin, const at::Tensor& x, const Names& names,
                     MixedBatchKernel kernel) {
  peft::nn::ForwardContext c;
  c.adapter_names = names;
  c.mixed_batch_kernel = kernel;
  peft::nn::ForwardContextGuard g(c);
  return lin->forward(x);
}

TEST(MixedBatch, GatheredLinearOn3DInputMatchesTheLoop) {
  torch::manual_seed(3);
  peft::nn::Linear lin = linear_with_adapters(5, /*bias=*/2);
  at::Tensor x = torch::randn({10, 3, 16});
  Names names;
  for (int i = 0; i < 10; ++i) names.push_back(i == 4 ? "__base__" : "a" + std::to_string(i % 5));
  torch::NoGradGuard no_grad;
  const at::Tensor loop = run_mixed(lin, x, names, MixedBatchKernel::kLoop);
  const at::Tensor gathered = run_mixed(lin, x, names, MixedBatchKernel::kGathered);
  EXPECT_EQ(compare(gathered, loop, 1e-5, 1e-5), "");
  // Row 4 is the base layer's output.
  lin->enable_adapters(false);
  EXPECT_EQ(compare(gathered[4], lin->forward(x)[4], 1e-6), "");
}

// Rows sorted by adapter (blocks) or round robin take strided views of the input and the output
// instead of gathering and scattering rows; leading "__base__" rows shift the grid. Each layout
// against PEFT's sub-batch loop, with one position per row (decode) and with three.
TEST(MixedBatch, GatheredLinearOnSortedAndRoundRobinRowsMatchesTheLoop) {
  torch::manual_seed(4);
  peft::nn::Linear lin = linear_with_adapters(3, /*bias=*/1);
  torch::NoGradGuard no_grad;
  const auto run = [&](const at::Tensor& x, const Names& names, MixedBatchKernel kernel) {
    return run_mixed(lin, x, names, kernel);
  };
  const Names blocks = {"a0", "a0", "a1", "a1", "a2", "a2"};
  const Names round_robin = {"a0", "a1", "a2", "a0", "a1", "a2"};
  const Names shifted = {"__base__", "__base__", "a2", "a0", "a2", "a0"};
  for (const auto& names : {blocks, round_robin, shifted}) {
    for (const int64_t L : {1, 3}) {
      const at::Tensor x = torch::randn({6, L, 16});
      const at::Tensor loop = run(x, names, MixedBatchKernel::kLoop);
      EXPECT_EQ(compare(run(x, names, MixedBatchKernel::kGathered), loop, 1e-5, 1e-5), "")
          << names[0] << names[1] << names[2] << " L=" << L;
      if (L == 1) {  // a 2-D input (rows, features)
        EXPECT_EQ(compare(run(x.squeeze(1), names, MixedBatchKernel::kGathered), loop.squeeze(1),
                          1e-5, 1e-5),
                  "");
      }
    }
  }
}

TEST(MixedBatch, KernelCacheFollowsInPlaceWeightUpdates) {
  Fixture f;
  const Names names = {"b", "default", "b", "default", "c", "c", "default"};
  f.mixed(names, MixedBatchKernel::kGathered);  // fills the cache
  {
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : f.net->lin->adapter_tensors("default")) t.mul_(2.0);
  }
  EXPECT_EQ(compare(f.mixed(names, MixedBatchKernel::kGathered), f.per_row(names), 1e-5, 1e-5), "");
}

TEST(MixedBatch, PeftErrors) {
  Fixture f;
  torch::NoGradGuard no_grad;
  try {
    MixedBatchGuard g(*f.net, Names(7, "nope"));
    FAIL() << "expected AdapterNotFoundError";
  } catch (const peft::AdapterNotFoundError& e) {
    EXPECT_NE(std::string(e.what()).find("Trying to infer with non-existing adapter(s): nope"),
              std::string::npos);
  }
  {
    MixedBatchGuard g(*f.net, Names(3, "b"));
    EXPECT_THROW(f.net->forward(f.ids), peft::ShapeMismatchError);
  }
  f.net->train();
  EXPECT_THROW(MixedBatchGuard(*f.net, Names(7, "b")), peft::ConfigError);
  f.net->eval();
  f.pm->merge_adapter();
  {
    MixedBatchGuard g(*f.net, Names(7, "b"));
    EXPECT_THROW(f.net->forward(f.ids), peft::ConfigError);
  }
  f.pm->unmerge_adapter();
  auto d = config(2, 2);
  d.use_dora = true;
  d.target_modules = std::vector<std::string>{"lin"};
  f.pm->add_adapter("dora", d);
  MixedBatchGuard g(*f.net, Names(7, "dora"));
  EXPECT_THROW(f.net->forward(f.ids), peft::ConfigError);
}

std::shared_ptr<peft::models::PretrainedModel> tiny_llama() {
  const nlohmann::json config = {{"model_type", "llama"},    {"vocab_size", 61},
                                 {"hidden_size", 32},        {"intermediate_size", 48},
                                 {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                                 {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-6},
                                 {"rope_theta", 10000.0},    {"tie_word_embeddings", false}};
  torch::manual_seed(0);
  auto model = peft::models::from_config(config.dump());
  model->eval();
  return model;
}

TEST(MixedBatch, GenerateGivesEachPromptItsAdapter) {
  auto model = tiny_llama();
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 16;
  c.target_modules = std::vector<std::string>{"q_proj", "v_proj", "down_proj", "embed_tokens"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  torch::manual_seed(1);
  auto pm = peft::get_peft_model(model, c, "fr");
  torch::manual_seed(2);
  pm->add_adapter("de", c);
  const std::vector<std::vector<int64_t>> prompts = {
      {3, 5, 7, 9}, {11, 2}, {4, 4, 8}, {1, 2, 3, 4, 5}};
  const Names names = {"de", "fr", "__base__", "fr"};
  peft::GenerationConfig g;
  g.max_new_tokens = 6;
  std::vector<std::vector<int64_t>> alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (names[i] == "__base__") {
      auto off = pm->disable_adapter();
      alone.push_back(peft::generate(*model, {prompts[i]}, g).front());
    } else {
      pm->set_adapter(names[i]);
      alone.push_back(peft::generate(*model, {prompts[i]}, g).front());
    }
  }
  std::vector<int64_t> base1;
  {
    auto off = pm->disable_adapter();
    base1 = peft::generate(*model, {prompts[1]}, g).front();
  }
  pm->set_adapter("fr");
  g.adapter_names = names;
  EXPECT_EQ(peft::generate(*model, prompts, g), alone);
  // The adapter changes the continuation (the test could fail).
  EXPECT_NE(alone[1], base1);
  g.adapter_names = {"de"};
  EXPECT_THROW(peft::generate(*model, prompts, g), peft::ShapeMismatchError);
}

}  // namespace
