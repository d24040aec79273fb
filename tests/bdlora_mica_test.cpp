// BD-LoRA and MiCA (PEFT 0.20's BdLoraLinearVariant and MiCA init): layer invariants (zero factor =
// base output, block forward = dense forward, merge = unmerged forward, merge + unmerge restores W,
// save -> load bit-identical), MiCA's frozen lora_B, and PEFT's refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "peft/combine.h"
#include "peft/error.h"
#include "peft/intruders.h"
#include "peft/lora/embedding.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/lora/variant.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;
using peft::test::message_of;

namespace {

using MLP = peft::test::MLP;

LoraConfig bd_config(std::vector<std::string> a, std::vector<std::string> b, int nblocks,
                     int r = 4) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  c.use_bdlora = peft::BdLoraConfig{
      .target_modules_bd_a = std::move(a), .target_modules_bd_b = std::move(b), .nblocks = nblocks};
  return c;
}

// Each factor's dense form: block_diag of the packed weight's row chunks.
at::Tensor dense(const at::Tensor& packed, int64_t nblocks) {
  return at::block_diag(at::chunk(packed, nblocks, 0));
}

TEST(BdLora, PackedFactorsAndABlockProductEqualToTheDenseBlockDiagonalForward) {
  torch::manual_seed(0);
  // lin0 10 -> 20 (A block-diagonal), lin1 20 -> 2 (B block-diagonal), r = 4, 2 blocks.
  MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), bd_config({"lin0"}, {"lin1"}, 2));
  auto& l0 = *mlp->lin0;
  auto& l1 = *mlp->lin1;
  EXPECT_EQ(l0.adapter_tensor("default", "lora_A.weight").sizes(), (at::IntArrayRef{4, 5}));
  EXPECT_EQ(l0.adapter_tensor("default", "lora_B.weight").sizes(), (at::IntArrayRef{20, 4}));
  EXPECT_EQ(l1.adapter_tensor("default", "lora_A.weight").sizes(), (at::IntArrayRef{4, 20}));
  EXPECT_EQ(l1.adapter_tensor("default", "lora_B.weight").sizes(), (at::IntArrayRef{2, 2}));
  // PEFT: the block-diagonal B starts at zero (even with init_lora_weights=false), the block A
  // with kaiming_uniform_(a=0): bound sqrt(6 / (in / nblocks)).
  EXPECT_TRUE(l1.adapter_tensor("default", "lora_B.weight").eq(0).all().item<bool>());
  EXPECT_LE(l0.adapter_tensor("default", "lora_A.weight").abs().max().item<double>(),
            std::sqrt(6.0 / 5.0));
  {
    torch::NoGradGuard g;
    l1.adapter_tensor("default", "lora_B.weight").normal_(0, 0.3);
  }
  mlp->eval();
  const at::Tensor x = torch::randn({3, 7, 10});
  torch::NoGradGuard g;
  const at::Tensor y = mlp->forward(x);
  // By hand with the dense block-diagonal factors.
  auto dense_lora = [](peft::nn::LoraLayerImpl& l, const at::Tensor& in, bool a_blocks) {
    at::Tensor A = l.adapter_tensor("default", "lora_A.weight");
    at::Tensor B = l.adapter_tensor("default", "lora_B.weight");
    if (a_blocks)
      A = dense(A, 2);
    else
      B = dense(B, 2);
    return at::linear(in, l.weight(), l.bias()) +
           at::matmul(at::matmul(in, A.t()), B.t()) * l.scaling("default");
  };
  const at::Tensor h = at::relu(dense_lora(l0, x, true));
  EXPECT_EQ(compare(y, dense_lora(l1, h, false), 1e-5), "");
  // The delta is the dense update; merging gives the same outputs, unmerging restores W.
  const at::Tensor w1 = l1.weight().clone();
  EXPECT_EQ(compare(l1.get_delta_weight("default"),
                    at::matmul(dense(l1.adapter_tensor("default", "lora_B.weight"), 2),
                               l1.adapter_tensor("default", "lora_A.weight")) *
                        2.0,
                    1e-6),
            "");
  pm->merge_adapter();
  EXPECT_EQ(compare(mlp->forward(x), y, 1e-5), "");
  pm->unmerge_adapter();
  EXPECT_EQ(compare(l1.weight(), w1, 1e-6), "");
}

TEST(BdLora, SaveThenLoadIsBitIdenticalAndRebuildsThePackedShapes) {
  torch::manual_seed(1);
  MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), bd_config({"lin0"}, {"lin1"}, 2));
  {
    torch::NoGradGuard g;
    for (auto& p : mlp->parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  peft::test::TempDir dir;
  pm->save_pretrained(dir.str());
  MLP other;
  auto loaded = peft::PeftModel::from_pretrained(other.ptr(), dir.str());
  {
    torch::NoGradGuard g;
    // The base weights only (the two MLPs were drawn differently); the adapter comes from the file.
    for (auto& item : mlp->named_parameters())
      if (item.key().find("lora_") == std::string::npos)
        other->named_parameters()[item.key()].copy_(item.value());
  }
  EXPECT_EQ(peft::test::state_dict_difference(pm->get_peft_model_state_dict("default"),
                                              loaded->get_peft_model_state_dict("default")),
            "");
  mlp->eval();
  other->eval();
  const at::Tensor x = torch::randn({4, 10});
  torch::NoGradGuard g;
  EXPECT_TRUE(at::equal(mlp->forward(x), other->forward(x)));
}

TEST(BdLora, PeftsRefusals) {
  torch::manual_seed(2);
  {
    MLP mlp;  // "lin" is in both names: matches both lists for lin0
    auto c = bd_config({"lin0"}, {"lin"}, 2);
    EXPECT_THROW(peft::get_peft_model(mlp.ptr(), c), peft::ConfigError);
    EXPECT_NE(message_of([&] {
                peft::get_peft_model(mlp.ptr(), c);
              }).find("matches both A and B block-diagonal patterns"),
              std::string::npos);
  }
  {
    MLP mlp;  // match_strict: lin1 matches neither
    auto c = bd_config({"lin0"}, {}, 2);
    EXPECT_NE(
        message_of([&] { peft::get_peft_model(mlp.ptr(), c); }).find("matches neither A nor B"),
        std::string::npos);
    c.use_bdlora->match_strict = false;  // then lin1 is plain LoRA
    auto pm = peft::get_peft_model(mlp.ptr(), c);
    EXPECT_EQ(mlp->lin1->adapter_tensor("default", "lora_A.weight").sizes(),
              (at::IntArrayRef{4, 20}));
  }
  {
    MLP mlp;  // r = 3 is not divisible by 2 blocks
    auto c = bd_config({"lin0"}, {"lin1"}, 2, 3);
    EXPECT_NE(message_of([&] { peft::get_peft_model(mlp.ptr(), c); }).find("not divisible by 2"),
              std::string::npos);
  }
  {
    MLP mlp;  // the same name in both lists: PEFT's config-time error
    auto c = bd_config({"lin0"}, {"lin0"}, 2);
    EXPECT_NE(message_of([&] {
                peft::get_peft_model(mlp.ptr(), c);
              }).find("Found overlapping modules in target_modules_bd lists"),
              std::string::npos);
  }
  {
    MLP mlp;  // no other variant alongside
    auto c = bd_config({"lin0"}, {"lin1"}, 2);
    c.use_dora = true;
    EXPECT_NE(
        message_of([&] { peft::get_peft_model(mlp.ptr(), c); }).find("'use_bdlora', 'use_dora'"),
        std::string::npos);
  }
  {
    MLP mlp;  // packed factors are not combined or reduced as if they were dense
    auto pm = peft::get_peft_model(mlp.ptr(), bd_config({"lin0"}, {"lin1"}, 2));
    EXPECT_THROW(peft::add_weighted_adapter(*pm, {"default"}, {1.0}, "combined"),
                 peft::UnsupportedError);
    EXPECT_THROW(peft::reduce_intruder_dimension(*pm), peft::UnsupportedError);
  }
}

LoraConfig mica_config(int r = 4) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 8;
  c.target_modules = std::vector<std::string>{"lin0", "lin1"};
  c.rank_pattern = {{"lin1", 2}};
  c.init_lora_weights = peft::InitLoraWeights{peft::InitLoraWeights::Kind::kMica, 0, ""};
  return c;
}

TEST(Mica, BHoldsTheMinorLeftSingularVectorsAIsZeroAndTheBaseIsUntouched) {
  torch::manual_seed(3);
  MLP mlp;
  mlp->eval();
  const at::Tensor x = torch::randn({5, 10});
  const at::Tensor base = mlp->forward(x).detach();
  const at::Tensor w0 = mlp->lin0->weight().clone();
  auto pm = peft::get_peft_model(mlp.ptr(), mica_config());
  torch::NoGradGuard g;
  EXPECT_TRUE(at::equal(mlp->lin0->weight(), w0));
  EXPECT_EQ(compare(mlp->forward(x), base, 1e-6), "");
  for (auto* l : {mlp->lin0.get(), mlp->lin1.get()}) {
    const int64_t r = l->adapter_settings("default").r;
    const at::Tensor A = l->adapter_tensor("default", "lora_A.weight");
    const at::Tensor B = l->adapter_tensor("default", "lora_B.weight");
    EXPECT_TRUE(A.eq(0).all().item<bool>());
    EXPECT_EQ(compare(at::matmul(B.t(), B), at::eye(r), 1e-5), "");
    // The projector onto the r minor left singular directions of W.
    auto [U, S, Vh] = at::linalg_svd(l->weight(), false);
    const at::Tensor Ur = U.slice(1, U.size(1) - r);
    EXPECT_EQ(compare(at::matmul(B, B.t()), at::matmul(Ur, Ur.t()), 1e-5), "");
  }
}

TEST(Mica, LoraBStaysFrozenThroughAdapterSwitchesYetIsSaved) {
  torch::manual_seed(4);
  MLP mlp;
  auto pm = peft::get_peft_model(mlp.ptr(), mica_config());
  auto trainable = [&] {
    std::set<std::string> out;
    for (auto& item : mlp->named_parameters())
      if (item.value().requires_grad()) out.insert(item.key());
    return out;
  };
  EXPECT_EQ(trainable(),
            (std::set<std::string>{"lin0.lora_A.default.weight", "lin1.lora_A.default.weight"}));
  // PEFT's print_trainable_parameters counts A only: 4*10 + 2*20.
  EXPECT_EQ(pm->get_nb_trainable_parameters().first, 80);
  LoraConfig plain;
  plain.target_modules = std::vector<std::string>{"lin0"};
  plain.r = 2;
  pm->add_adapter("other", plain);
  pm->set_adapter("other");
  EXPECT_EQ(trainable(),
            (std::set<std::string>{"lin0.lora_A.other.weight", "lin0.lora_B.other.weight"}));
  pm->set_adapter("default");
  EXPECT_EQ(trainable(),
            (std::set<std::string>{"lin0.lora_A.default.weight", "lin1.lora_A.default.weight"}));
  std::set<std::string> saved;
  for (auto& [k, v] : pm->get_peft_model_state_dict("default")) saved.insert(k);
  EXPECT_TRUE(saved.count("base_model.model.lin0.lora_B.weight"));
}

TEST(Mica, EmbeddingAndPeftsRankError) {
  torch::manual_seed(5);
  peft::nn::Embedding emb(7, 5);
  peft::nn::AdapterSettings s;
  s.r = 3;
  s.init_lora_weights = peft::InitLoraWeights{peft::InitLoraWeights::Kind::kMica, 0, ""};
  emb->update_layer("default", s);
  const at::Tensor A = emb->adapter_tensor("default", "lora_embedding_A");
  const at::Tensor B = emb->adapter_tensor("default", "lora_embedding_B");
  EXPECT_TRUE(A.eq(0).all().item<bool>());
  EXPECT_TRUE(A.requires_grad());
  EXPECT_FALSE(B.requires_grad());
  EXPECT_EQ(compare(at::matmul(B.t(), B), at::eye(3), 1e-5), "");
  s.r = 6;  // W^T is 5 x 7
  EXPECT_NE(message_of([&] { emb->update_layer("big", s); })
                .find("MiCA requires `r` <= min(num_embeddings, embedding_dim) but got r=6 for an "
                      "embedding layer with weight shape (7, 5) (max usable r is 5)."),
            std::string::npos);
  peft::nn::Linear lin(2, 3);
  s.r = 3;
  EXPECT_NE(message_of([&] { lin->update_layer("default", s); })
                .find("MiCA requires `r` <= min(in_features, out_features) but got r=3 for a "
                      "layer with weight shape (3, 2) (max usable r is 2)."),
            std::string::npos);
}

}  // namespace
