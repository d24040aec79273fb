// bitsandbytes-compatible quantization: NF4/FP4 code books and decision trees, nibble packing,
// double quantization with the dynamic map, padding of a partial last block, LLM.int8 row-wise
// quantization, input validation.
#include "peft/quant/quantize.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "peft/error.h"
#include "test_util.h"

using peft::test::compare;
namespace quant = peft::quant;
using quant::QuantType;

namespace {

// The published NF4 table (QLoRA paper appendix E; bitsandbytes get_4bit_type("nf4")).
const std::vector<double> kPublishedNF4 = {-1.0,
                                           -0.6961928009986877,
                                           -0.5250730514526367,
                                           -0.39491748809814453,
                                           -0.28444138169288635,
                                           -0.18477343022823334,
                                           -0.09105003625154495,
                                           0.0,
                                           0.07958029955625534,
                                           0.16093020141124725,
                                           0.24611230194568634,
                                           0.33791524171829224,
                                           0.44070982933044434,
                                           0.5626170039176941,
                                           0.7229568362236023,
                                           1.0};

at::Tensor code_of(QuantType t) {
  return torch::tensor(t == QuantType::kNF4 ? quant::nf4_code() : quant::fp4_code());
}

std::vector<int64_t> nibbles(const at::Tensor& packed) {
  std::vector<int64_t> out;
  at::Tensor p = packed.reshape({-1}).to(torch::kLong);
  for (int64_t i = 0; i < p.numel(); ++i) {
    const int64_t b = p[i].item<int64_t>();
    out.push_back(b >> 4);
    out.push_back(b & 15);
  }
  return out;
}

TEST(Quantize, NF4CodeBookMatchesThePublishedTable) {
  const std::vector<float> c = quant::nf4_code();
  ASSERT_EQ(c.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_NEAR(c[i], kPublishedNF4[i], 1e-7) << "nibble " << i;
}

TEST(Quantize, FP4CodeBookMatchesBitsandbytes) {
  // get_4bit_type("fp4") / 12, and the literals of dDequantizeFP4Tree (kernels.cu).
  const std::vector<double> expected = {
      0.0,  0.0625 / 12,  8.0 / 12,  1.0,  4.0 / 12,  6.0 / 12,  2.0 / 12,  3.0 / 12,
      -0.0, -0.0625 / 12, -8.0 / 12, -1.0, -4.0 / 12, -6.0 / 12, -2.0 / 12, -3.0 / 12};
  const std::vector<double> kernel_literals = {5.208333333e-03, 0.66666667, 1.0, 0.33333333, 0.5,
                                               0.16666667,      0.25};
  const std::vector<float> c = quant::fp4_code();
  ASSERT_EQ(c.size(), 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_NEAR(c[i], expected[i], 1e-7) << "nibble " << i;
  for (size_t i = 1; i < 8; ++i) {
    EXPECT_NEAR(c[i], kernel_literals[i - 1], 1e-7) << "nibble " << i;
    EXPECT_EQ(c[i + 8], -c[i]) << "sign bit of nibble " << i;
  }
}

TEST(Quantize, DynamicMapHasBitsandbytesStructure) {
  const std::vector<float> m = quant::dynamic_map();
  ASSERT_EQ(m.size(), 256u);
  for (size_t i = 1; i < 256; ++i) EXPECT_LT(m[i - 1], m[i]) << "index " << i;
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  // Smallest positive: midpoint of linspace(0.1, 1, 2) * 1e-6; largest below 1: (1 + 1 - 0.9/64)
  // / 2.
  EXPECT_NEAR(m[128], 0.55e-6, 1e-12);
  EXPECT_NEAR(m[254], 0.99296875, 1e-7);
  EXPECT_NEAR(m[0], -0.99296875, 1e-7);
  for (size_t j = 1; j < 128; ++j) EXPECT_EQ(m[127 - j], -m[127 + j]) << "j " << j;
}

// Values that are code points times a per-block absmax come back bit-exactly, with the chosen
// nibbles.
TEST(Quantize, CodePointsTimesAbsmaxRoundTripExactly) {
  for (QuantType t : {QuantType::kNF4, QuantType::kFP4}) {
    torch::manual_seed(1);
    const int64_t nblocks = 5, bs = 64;
    at::Tensor nib = torch::randint(0, 16, {nblocks, bs}, torch::kLong);
    // Each block holds the code +1.0 so that its absmax is the scale.
    nib.select(1, 7).fill_(t == QuantType::kNF4 ? 15 : 3);
    at::Tensor scale = torch::rand({nblocks, 1}) * 3 + 0.1;
    at::Tensor W = (code_of(t).index_select(0, nib.reshape({-1})).view({nblocks, bs}) * scale)
                       .reshape({10, 32});
    quant::Quantized4bit q = quant::quantize_4bit(W, t, bs);
    EXPECT_EQ(compare(q.absmax, scale.reshape({-1}), 0.0), "");
    EXPECT_EQ(compare(quant::dequantize_4bit(q), W, 0.0), "") << quant::to_string(t);
    // FP4's 0 and -0 dequantize alike; compare nibbles only where the value is non-zero.
    const std::vector<int64_t> got = nibbles(q.packed);
    for (int64_t i = 0; i < nib.numel(); ++i) {
      const int64_t want = nib.reshape({-1})[i].item<int64_t>();
      if (t == QuantType::kFP4 && (want & 7) == 0) continue;
      ASSERT_EQ(got[static_cast<size_t>(i)], want) << quant::to_string(t) << " element " << i;
    }
  }
}

TEST(Quantize, HandComputedNF4BlockPacksHighNibbleFirst) {
  // normed value -> nibble from dQuantizeNF4's thresholds (x > t goes up).
  const std::vector<float> normed = {1.0f,  -1.0f, 0.04f, 0.039f, -0.05f, -0.04f, 0.95f, 0.85f,
                                     -0.9f, -0.8f, 0.5f,  0.51f,  0.0f,   0.3f,   0.25f, -0.3f};
  const std::vector<uint8_t> bytes = {0xF0, 0x87, 0x67, 0xFE, 0x01, 0xCD, 0x7B, 0xA4};
  at::Tensor W = torch::tensor(normed).repeat({4}) * 2.0f;  // absmax 2: x * (1/2) is exact
  quant::Quantized4bit q = quant::quantize_4bit(W, QuantType::kNF4, 64);
  ASSERT_EQ(q.packed.sizes(), (std::vector<int64_t>{32, 1}));
  EXPECT_EQ(q.packed.scalar_type(), torch::kByte);
  EXPECT_EQ(q.absmax.item<float>(), 2.0f);
  for (int64_t i = 0; i < 32; ++i)
    EXPECT_EQ(q.packed[i][0].item<int64_t>(), bytes[static_cast<size_t>(i % 8)]) << "byte " << i;
}

TEST(Quantize, HandComputedFP4BlockFollowsTheKernelTree) {
  // 1.0 -> 0b0011, -1 -> 0b1011, 0 -> 0, -0.001 -> 0b1000 (sign kept), 0.3 -> 4/12 (0b100), 0.5 ->
  // 6/12 (0b101), -0.7 -> -8/12 (0b1010), 0.004 -> 0.0625/12 (0b001), 0.1 -> 2/12 (0b110), 0.25 ->
  // 3/12 (0b111), -0.9 -> 0b1011.
  std::vector<float> normed = {1.0f,  -1.0f,  0.0f, -0.001f, 0.3f,  0.5f,
                               -0.7f, 0.004f, 0.1f, 0.25f,   -0.9f, 0.0f};
  const std::vector<int64_t> bytes = {0x3B, 0x08, 0x45, 0xA1, 0x67, 0xB0};
  normed.resize(64, 0.0f);
  quant::Quantized4bit q = quant::quantize_4bit(torch::tensor(normed) * 4.0f, QuantType::kFP4, 64);
  for (size_t i = 0; i < bytes.size(); ++i)
    EXPECT_EQ(q.packed[static_cast<int64_t>(i)][0].item<int64_t>(), bytes[i]) << "byte " << i;
  EXPECT_EQ(q.packed.slice(0, 6).sum().item<int64_t>(), 0);
}

// Each value lands on its nearest code: error <= half the largest code gap times the block's
// absmax.
TEST(Quantize, RoundTripErrorIsBoundedByHalfTheLargestGap) {
  torch::manual_seed(0);
  at::Tensor W = torch::randn({300, 37}) * 0.02;  // 11100 values: a partial last block
  for (QuantType t : {QuantType::kNF4, QuantType::kFP4}) {
    for (int64_t bs : {64, 256}) {
      quant::Quantized4bit q = quant::quantize_4bit(W, t, bs);
      const int64_t nblocks = (W.numel() + bs - 1) / bs;
      ASSERT_EQ(q.absmax.numel(), nblocks);
      at::Tensor sorted = std::get<0>(code_of(t).sort());
      const double max_gap = (sorted.slice(0, 1) - sorted.slice(0, 0, 15)).max().item<double>();
      at::Tensor deq = quant::dequantize_4bit(q);
      ASSERT_EQ(deq.sizes(), W.sizes());
      at::Tensor err =
          torch::constant_pad_nd((deq - W).abs().reshape({-1}), {0, nblocks * bs - W.numel()}, 0.0);
      at::Tensor bound = 0.5 * max_gap * q.absmax.unsqueeze(1) * (1 + 1e-5);
      EXPECT_TRUE((err.view({nblocks, bs}) <= bound).all().item<bool>())
          << quant::to_string(t) << " bs " << bs;
      // And the chosen code is the nearest one (up to the kernel's rounded thresholds).
      at::Tensor absmax_el = q.absmax.repeat_interleave(bs).slice(0, 0, W.numel());
      at::Tensor normed = W.reshape({-1}) / absmax_el;
      at::Tensor best = (normed.unsqueeze(1) - code_of(t).unsqueeze(0)).abs().amin(1);
      at::Tensor chosen = (normed - deq.reshape({-1}) / absmax_el).abs();
      EXPECT_LE((chosen - best).max().item<double>(), 1e-6) << quant::to_string(t) << " bs " << bs;
    }
  }
}

TEST(Quantize, OddNumelPadsTheLastBlockAndByte) {
  torch::manual_seed(2);
  at::Tensor W = torch::randn({7, 13});  // 91 values: blocks of 64 + 27, 46 bytes
  for (QuantType t : {QuantType::kNF4, QuantType::kFP4}) {
    quant::Quantized4bit q = quant::quantize_4bit(W, t, 64);
    ASSERT_EQ(q.packed.sizes(), (std::vector<int64_t>{46, 1}));
    ASSERT_EQ(q.absmax.numel(), 2);
    EXPECT_EQ(q.absmax[1].item<float>(), W.reshape({-1}).slice(0, 64).abs().max().item<float>());
    // The padding element (0.0) quantizes to the code of zero: NF4 0b0111, FP4 0b0000.
    EXPECT_EQ(q.packed[45][0].item<int64_t>() & 15, t == QuantType::kNF4 ? 7 : 0);
    at::Tensor deq = quant::dequantize_4bit(q);
    ASSERT_EQ(deq.sizes(), W.sizes());
    EXPECT_LE((deq - W).abs().max().item<double>(), 0.17 * q.absmax.max().item<double>());
  }
}

TEST(Quantize, AllZeroBlockDequantizesToZero) {
  at::Tensor W = torch::zeros({128});
  W.slice(0, 64).fill_(0.5);
  quant::Quantized4bit q = quant::quantize_4bit(W, QuantType::kNF4, 64);
  EXPECT_EQ(q.absmax[0].item<float>(), 0.0f);
  EXPECT_EQ(q.packed.slice(0, 0, 32).sum().item<int64_t>(),
            0);  // nibble 0, as the kernel's NaN path
  EXPECT_EQ(compare(quant::dequantize_4bit(q), W, 0.0), "");
}

TEST(Quantize, DoubleQuantizationReproducesAbsmaxWithinTheDynamicMapError) {
  torch::manual_seed(3);
  at::Tensor W =
      torch::randn({1000, 64}) * (torch::rand({1000, 1}) + 0.5);  // 1000 blocks: 4 nested blocks
  quant::Quantized4bit single = quant::quantize_4bit(W, QuantType::kNF4, 64, false);
  quant::Quantized4bit nested = quant::quantize_4bit(W, QuantType::kNF4, 64, true);
  ASSERT_TRUE(nested.nested);
  EXPECT_EQ(nested.absmax.scalar_type(), torch::kByte);
  ASSERT_EQ(nested.absmax.numel(), 1000);
  ASSERT_EQ(nested.nested_absmax.numel(), 4);
  EXPECT_EQ(nested.nested_blocksize, 256);
  EXPECT_TRUE(torch::equal(nested.packed, single.packed));  // the 4-bit codes use the exact absmax
  EXPECT_FLOAT_EQ(nested.offset, single.absmax.mean().item<float>());
  EXPECT_EQ(compare(nested.nested_code, torch::tensor(quant::dynamic_map()), 0.0), "");

  at::Tensor sorted = torch::tensor(quant::dynamic_map());
  const double max_gap = (sorted.slice(0, 1) - sorted.slice(0, 0, 255)).max().item<double>();
  at::Tensor centered = single.absmax - nested.offset;
  at::Tensor nested_absmax =
      torch::constant_pad_nd(centered, {0, 24}, 0.0).view({4, 256}).abs().amax(1);
  EXPECT_EQ(compare(nested.nested_absmax, nested_absmax, 0.0), "");
  at::Tensor err = torch::constant_pad_nd((quant::dequantize_absmax(nested) - single.absmax).abs(),
                                          {0, 24}, 0.0);
  EXPECT_TRUE(
      (err.view({4, 256}) <= 0.5 * max_gap * nested_absmax.unsqueeze(1) + 1e-6).all().item<bool>());

  const double e1 = (quant::dequantize_4bit(single) - W).norm().item<double>();
  const double e2 = (quant::dequantize_4bit(nested) - W).norm().item<double>();
  EXPECT_NEAR(e2 / e1, 1.0, 0.02);
}

TEST(Quantize, BlockwiseDynamicQuantizationPicksTheNearestCode) {
  torch::manual_seed(4);
  at::Tensor A = torch::randn({1000});
  quant::QuantizedBlockwise q = quant::quantize_blockwise(A, 256);
  ASSERT_EQ(q.absmax.numel(), 4);
  at::Tensor absmax_el = q.absmax.repeat_interleave(256).slice(0, 0, 1000);
  at::Tensor normed = A / absmax_el;
  at::Tensor best = (normed.unsqueeze(1) - q.code.unsqueeze(0)).abs().amin(1);
  at::Tensor chosen = (normed - q.code.index_select(0, q.codes.to(torch::kLong))).abs();
  EXPECT_LE((chosen - best).max().item<double>(), 1e-6);
  EXPECT_LE((quant::dequantize_blockwise(q) - A).abs().max().item<double>(),
            0.0071 * q.absmax.max().item<double>());
}

TEST(Quantize, HalfAndBfloat16KeepTheirDtype) {
  torch::manual_seed(5);
  at::Tensor W = torch::randn({16, 40});
  for (auto dt : {torch::kHalf, torch::kBFloat16}) {
    at::Tensor Wd = W.to(dt);
    quant::Quantized4bit q = quant::quantize_4bit(Wd, QuantType::kNF4, 64, true);
    quant::Quantized4bit qf = quant::quantize_4bit(Wd.to(torch::kFloat), QuantType::kNF4, 64, true);
    EXPECT_TRUE(torch::equal(q.packed, qf.packed));
    at::Tensor deq = quant::dequantize_4bit(q);
    EXPECT_EQ(deq.scalar_type(), dt);
    EXPECT_EQ(quant::dequantize_4bit(q, torch::kFloat).scalar_type(), torch::kFloat);
    EXPECT_EQ(
        compare(deq.to(torch::kFloat), quant::dequantize_4bit(qf).to(dt).to(torch::kFloat), 0.0),
        "");
  }
}

TEST(Quantize, Int8RowwiseMatchesHandValuesAndBound) {
  at::Tensor W = torch::tensor({{1.0f, -0.5f, 0.25f, 0.0f, 2.0f}, {0.0f, 0.0f, 0.0f, 0.0f, 0.0f}});
  quant::QuantizedInt8 q = quant::int8_vectorwise_quant(W);
  EXPECT_EQ(q.CB.scalar_type(), torch::kChar);
  // 127 / 2 * [1, -0.5, 0.25, 0, 2] = [63.5, -31.75, 15.875, 0, 127]; 63.5 rounds half to even.
  EXPECT_TRUE(
      torch::equal(q.CB, torch::tensor({{64, -32, 16, 0, 127}, {0, 0, 0, 0, 0}}, torch::kChar)));
  EXPECT_EQ(compare(q.SCB, torch::tensor({2.0f, 0.0f}), 0.0), "");
  EXPECT_EQ(compare(quant::int8_vectorwise_dequant(q).select(0, 1), torch::zeros({5}), 0.0), "");

  torch::manual_seed(6);
  at::Tensor R = torch::randn({2, 37, 100}) * torch::rand({2, 37, 1}) * 5;
  quant::QuantizedInt8 r = quant::int8_vectorwise_quant(R);
  ASSERT_EQ(r.SCB.numel(), 74);
  EXPECT_EQ(compare(r.SCB, R.abs().amax(-1).reshape({-1}), 0.0), "");
  EXPECT_EQ(r.CB.abs().to(torch::kInt).amax(-1).min().item<int64_t>(), 127);
  at::Tensor err = (quant::int8_vectorwise_dequant(r) - R).abs().reshape({74, 100});
  EXPECT_TRUE((err <= r.SCB.unsqueeze(1) / 254 * (1 + 1e-5)).all().item<bool>());
}

TEST(Quantize, InvalidInputsThrowTypedErrors) {
  at::Tensor W = torch::randn({4, 64});
  for (int64_t bs : {0, 32, 100, 8192}) {
    EXPECT_THROW(quant::quantize_4bit(W, QuantType::kNF4, bs), peft::ConfigError) << bs;
    EXPECT_THROW(quant::quantize_blockwise(W, bs), peft::ConfigError) << bs;
  }
  try {
    quant::quantize_4bit(W, QuantType::kNF4, 32);
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("64, 128, 256, 512, 1024, 2048, 4096"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(quant::quantize_4bit(W.to(torch::kInt), QuantType::kNF4), peft::ConfigError);
  EXPECT_THROW(quant::quantize_4bit(W.to(torch::kDouble), QuantType::kFP4), peft::ConfigError);
  EXPECT_THROW(quant::quantize_4bit(torch::zeros({0, 4}), QuantType::kNF4),
               peft::ShapeMismatchError);
  EXPECT_THROW(quant::int8_vectorwise_quant(W.to(torch::kLong)), peft::ConfigError);
  EXPECT_THROW(quant::parse_quant_type("int4"), peft::ConfigError);
  EXPECT_EQ(quant::parse_quant_type("fp4"), QuantType::kFP4);

  quant::Quantized4bit q = quant::quantize_4bit(W, QuantType::kNF4, 64);
  quant::Quantized4bit bad = q;
  bad.absmax = q.absmax.slice(0, 0, 3);
  EXPECT_THROW(quant::dequantize_4bit(bad), peft::ShapeMismatchError);
  bad = q;
  bad.shape = {4, 65};
  EXPECT_THROW(quant::dequantize_4bit(bad), peft::ShapeMismatchError);
  quant::QuantizedInt8 i8 = quant::int8_vectorwise_quant(W);
  i8.SCB = i8.SCB.slice(0, 0, 2);
  EXPECT_THROW(quant::int8_vectorwise_dequant(i8), peft::ShapeMismatchError);
}

}  // namespace
