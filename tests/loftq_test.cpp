// LoftQ initialisation (peft/lora/loftq.h): the quantize / low-rank SVD alternation of PEFT's
// loftq_init, the single-shot _loftq_init_new, argument validation and the approximation error they
// achieve.
#include "peft/lora/loftq.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "peft/error.h"
#include "peft/quant/quantize.h"

namespace init = peft::init;
namespace quant = peft::quant;

namespace {

constexpr int64_t kOut = 64, kIn = 48, kRank = 8;

at::Tensor random_weight(uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::randn({kOut, kIn}) * 0.02;
}

at::Tensor nf4_roundtrip(const at::Tensor& W) {
  return quant::dequantize_4bit(quant::quantize_4bit(W, quant::QuantType::kNF4, 64, false),
                                at::kFloat);
}

double fro(const at::Tensor& t) { return t.to(at::kDouble).pow(2).sum().sqrt().item<double>(); }

// The rank-r truncated SVD of M, U_r diag(S_r) Vh_r, and S_r.
std::pair<at::Tensor, at::Tensor> truncated_svd(const at::Tensor& M, int64_t r) {
  auto [U, S, Vh] = at::linalg_svd(M.to(at::kDouble), false);
  const at::Tensor Sr = S.slice(0, 0, r);
  return {at::mm(U.slice(1, 0, r) * Sr.unsqueeze(0), Vh.slice(0, 0, r)).to(at::kFloat),
          Sr.to(at::kFloat)};
}

template <typename Fn>
std::string config_error_message(Fn&& fn) {
  try {
    fn();
  } catch (const peft::ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected peft::ConfigError";
  return "";
}

}  // namespace

// LoftQ with the adapter beats the plain NF4 quantization, and more iterations do not make it
// worse.
TEST(LoftQ, ReducesQuantizationErrorAndIterationsHelp) {
  const at::Tensor W = random_weight();
  const double err_plain = fro(W - nf4_roundtrip(W));
  const init::LoftQResult r1 = init::loftq_init(W, 4, kRank, 1);
  const init::LoftQResult r5 = init::loftq_init(W, 4, kRank, 5);
  const double err1 = init::loftq_error(W, r1.dequantized, r1.lora_A, r1.lora_B, 1.0);
  const double err5 = init::loftq_error(W, r5.dequantized, r5.lora_A, r5.lora_B, 1.0);
  RecordProperty("err_plain", std::to_string(err_plain));
  RecordProperty("err_iter1", std::to_string(err1));
  RecordProperty("err_iter5", std::to_string(err5));
  std::printf("||W-Q_plain|| = %.6f  ||W-(Q+BA)|| iter1 = %.6f  iter5 = %.6f\n", err_plain, err1,
              err5);
  EXPECT_LT(err1, err_plain * 0.95);
  EXPECT_LT(err5, err1);  // 200 seeded runs (4 and 8 bits): err5 / err1 <= 0.93
  // The rank-r correction of iteration 1 removes exactly the top-r singular values of the residual.
  auto S = at::linalg_svdvals(W - r1.dequantized).to(at::kDouble);
  const double tail = S.slice(0, kRank).pow(2).sum().sqrt().item<double>();
  EXPECT_NEAR(err1, tail, 1e-5 * err_plain);
}

// num_iter = 1: Q is the plain NF4 round trip bit for bit and B A is the rank-r truncated SVD of W
// - Q, split evenly (A A^T = B^T B = diag(S_r)) as in PEFT's _low_rank_decomposition.
TEST(LoftQ, SingleIterationIsQuantizeThenTruncatedSvd) {
  const at::Tensor W = random_weight(1);
  const init::LoftQResult r = init::loftq_init(W, 4, kRank, 1);
  ASSERT_EQ(r.dequantized.sizes(), W.sizes());
  ASSERT_EQ(r.lora_A.sizes(), (at::IntArrayRef{kRank, kIn}));
  ASSERT_EQ(r.lora_B.sizes(), (at::IntArrayRef{kOut, kRank}));
  EXPECT_EQ(r.dequantized.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(r.dequantized, nf4_roundtrip(W)));

  auto [best, Sr] = truncated_svd(W - r.dequantized, kRank);
  EXPECT_TRUE(at::allclose(at::mm(r.lora_B, r.lora_A), best, 0.0, 1e-5));
  const at::Tensor diag = at::diag(Sr);
  EXPECT_TRUE(at::allclose(at::mm(r.lora_A, r.lora_A.t()), diag, 0.0, 1e-5));
  EXPECT_TRUE(at::allclose(at::mm(r.lora_B.t(), r.lora_B), diag, 0.0, 1e-5));
}

// Later iterations quantize W - B_prev A_prev, not W: Q changes, and it is the NF4 round trip of
// that residual.
TEST(LoftQ, SecondIterationQuantizesTheLowRankResidual) {
  const at::Tensor W = random_weight(2);
  const init::LoftQResult r1 = init::loftq_init(W, 4, kRank, 1);
  const init::LoftQResult r2 = init::loftq_init(W, 4, kRank, 2);
  EXPECT_FALSE(at::equal(r1.dequantized, r2.dequantized));
  EXPECT_TRUE(at::equal(r2.dequantized, nf4_roundtrip(W - at::mm(r1.lora_B, r1.lora_A))));
  auto [best, Sr] = truncated_svd(W - r2.dequantized, kRank);
  EXPECT_TRUE(at::allclose(at::mm(r2.lora_B, r2.lora_A), best, 0.0, 1e-5));
}

// bf16 weights: computed in float32; Q comes back in bf16 (PEFT casts the dequantized weight back),
// A and B stay float32 (PEFT assigns its float32 factors to the adapter unchanged).
TEST(LoftQ, Bf16WeightKeepsItsDtypeForQ) {
  const at::Tensor W = random_weight(3).to(at::kBFloat16);
  const init::LoftQResult r = init::loftq_init(W, 4, kRank, 2);
  EXPECT_EQ(r.dequantized.scalar_type(), at::kBFloat16);
  EXPECT_EQ(r.lora_A.scalar_type(), at::kFloat);
  EXPECT_EQ(r.lora_B.scalar_type(), at::kFloat);
  const init::LoftQResult r1 = init::loftq_init(W, 4, kRank, 1);
  EXPECT_TRUE(at::equal(r1.dequantized, nf4_roundtrip(W.to(at::kFloat)).to(at::kBFloat16)));
  const double err_plain = fro(W.to(at::kFloat) - nf4_roundtrip(W.to(at::kFloat)));
  EXPECT_LT(init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B), err_plain);
}

// 8 bits: bitsandbytes Int8Params (float16 cast, row-wise absmax int8).
TEST(LoftQ, EightBitsUsesInt8RowwiseQuantization) {
  const at::Tensor W = random_weight(4);
  const at::Tensor q_plain =
      quant::int8_vectorwise_dequant(quant::int8_vectorwise_quant(W.to(at::kHalf)));
  const init::LoftQResult r = init::loftq_init(W, 8, kRank, 1);
  EXPECT_TRUE(at::equal(r.dequantized, q_plain));
  const double err_plain = fro(W - q_plain);
  const double err = init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B);
  std::printf("int8: ||W-Q_plain|| = %.6g  ||W-(Q+BA)|| = %.6g\n", err_plain, err);
  EXPECT_LT(err, err_plain);
  EXPECT_LT(err_plain, fro(W - nf4_roundtrip(W)));  // int8 is the finer quantization
}

// A weight whose size is not a multiple of the 64-value block (bitsandbytes pads the last block).
TEST(LoftQ, OddShapes) {
  torch::manual_seed(5);
  const at::Tensor W = torch::randn({10, 7});
  const init::LoftQResult r = init::loftq_init(W, 4, 7, 1);
  EXPECT_TRUE(at::equal(r.dequantized, nf4_roundtrip(W)));
  // Full rank: Q + B A reproduces W.
  EXPECT_LT(init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B), 1e-5);
}

TEST(LoftQ, BadArgumentsAreConfigErrors) {
  const at::Tensor W = random_weight();
  for (int bits : {0, 2, 3, 16}) {
    const std::string msg = config_error_message([&] { init::loftq_init(W, bits, kRank, 1); });
    EXPECT_NE(msg.find("4 (nf4) and 8 (int8)"), std::string::npos) << msg;
  }
  EXPECT_NE(config_error_message([&] { init::loftq_init(W, 4, kRank, 0); }).find("greater than 0"),
            std::string::npos);
  EXPECT_NE(config_error_message([&] { init::loftq_init(W, 4, 0, 1); }).find("1 <= r <= min"),
            std::string::npos);
  EXPECT_NE(config_error_message([&] { init::loftq_init(W, 4, kIn + 1, 1); }).find("= 48"),
            std::string::npos);
  EXPECT_NO_THROW(init::loftq_init(W, 4, kIn, 1));
  EXPECT_THROW(init::loftq_init(W.reshape({-1}), 4, 1, 1), peft::ShapeMismatchError);
  EXPECT_THROW(init::loftq_init(W.to(at::kInt), 4, 1, 1), peft::ConfigError);
  EXPECT_THROW(init::loftq_init_new(nf4_roundtrip(W), W, kIn + 1), peft::ConfigError);
  EXPECT_THROW(init::loftq_init_new(nf4_roundtrip(W).t(), W, kRank), peft::ShapeMismatchError);
  EXPECT_THROW(init::loftq_error(W, W, torch::zeros({kRank, kIn}), torch::zeros({kOut, kRank + 1})),
               peft::ShapeMismatchError);
}

// replace_lora_weights_loftq's single shot on an already quantized weight: same factors as one
// loftq_init iteration; the Quantized4bit overload dequantizes like bitsandbytes (the quant state's
// dtype).
TEST(LoftQ, InitNewReducesErrorLikeOneIteration) {
  const at::Tensor W = random_weight(6);
  const quant::Quantized4bit q = quant::quantize_4bit(W, quant::QuantType::kNF4, 64, false);
  const at::Tensor Q = quant::dequantize_4bit(q);
  auto [A, B] = init::loftq_init_new(Q, W, kRank);
  ASSERT_EQ(A.sizes(), (at::IntArrayRef{kRank, kIn}));
  ASSERT_EQ(B.sizes(), (at::IntArrayRef{kOut, kRank}));
  const double err_plain = fro(W - Q);
  const double err = init::loftq_error(W, Q, A, B);
  std::printf("loftq_init_new: ||W-Q|| = %.6f  ||W-(Q+BA)|| = %.6f\n", err_plain, err);
  EXPECT_LT(err, err_plain * 0.95);
  const init::LoftQResult r1 = init::loftq_init(W, 4, kRank, 1);
  EXPECT_TRUE(at::equal(A, r1.lora_A));
  EXPECT_TRUE(at::equal(B, r1.lora_B));
  auto [A2, B2] = init::loftq_init_new(q, W, kRank);
  EXPECT_TRUE(at::equal(A2, A));
  EXPECT_TRUE(at::equal(B2, B));

  // bf16 model quantized in 4 bits: the payload dequantizes to bf16, the original weight is read in
  // float32.
  const quant::Quantized4bit qb =
      quant::quantize_4bit(W.to(at::kBFloat16), quant::QuantType::kNF4, 64, false);
  auto [A3, B3] = init::loftq_init_new(qb, W, kRank);
  EXPECT_EQ(A3.scalar_type(), at::kFloat);
  auto [best, Sr] = truncated_svd(W - quant::dequantize_4bit(qb).to(at::kFloat), kRank);
  EXPECT_TRUE(at::allclose(at::mm(B3, A3), best, 0.0, 1e-5));
}

// loftq_error = ||W - (Q + s B A)||_F; PEFT does not divide A, B by the scaling, so only s = 1 is
// LoftQ's target.
TEST(LoftQ, ErrorHelperAppliesScaling) {
  const at::Tensor W = random_weight(7);
  const init::LoftQResult r = init::loftq_init(W, 4, kRank, 1);
  const at::Tensor BA = at::mm(r.lora_B, r.lora_A);
  EXPECT_NEAR(init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B, 0.0), fro(W - r.dequantized),
              1e-9);
  EXPECT_NEAR(init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B, 2.0),
              fro(W - r.dequantized - 2.0 * BA), 1e-6);
  EXPECT_GT(init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B, 2.0),
            init::loftq_error(W, r.dequantized, r.lora_A, r.lora_B, 1.0));
}
