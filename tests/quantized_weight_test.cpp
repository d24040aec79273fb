// QuantizedWeight: the fused tile-wise dequantise-and-multiply (NF4 / FP4, double quantization,
// tiles that straddle 4-bit blocks), its backward, LLM.int8 against a reference written out here,
// reduced-precision inputs, memory footprint and input validation (the bitsandbytes state dict:
// bnb_state_test.cpp).
#include "peft/quant/quantized_weight.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "peft/error.h"
#include "quantized_weight_cases.h"

namespace quant = peft::quant;
using quant::QuantizedWeight;
using quant::QuantizedWeightTestAccess;
using quant::QuantizeOptions;
using quant::QuantMethod;
using namespace peft::test::quant;  // the shared cases and helpers

TEST(QuantizedWeightMethod, ParsesAndPrintsTheThreeNames) {
  for (const char* s : {"nf4", "fp4", "int8"})
    EXPECT_EQ(quant::to_string(quant::parse_quant_method(s)), s);
  EXPECT_EQ(quant::parse_quant_method("int8"), QuantMethod::kInt8);
  try {
    quant::parse_quant_method("int4");
    FAIL() << "no error";
  } catch (const peft::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("int4"), std::string::npos) << m;
    EXPECT_NE(m.find("\"nf4\", \"fp4\""), std::string::npos) << m;
    EXPECT_NE(m.find("\"int8\""), std::string::npos) << m;
  }
}

TEST(QuantizedWeightQuantize, RequiresA2DWeight) {
  for (const auto& W : {torch::randn({16}), torch::randn({2, 4, 64}), torch::zeros({0, 64})}) {
    EXPECT_THROW(QuantizedWeight::quantize(W, options(QuantMethod::kNF4)), peft::ShapeMismatchError)
        << W.sizes();
    EXPECT_THROW(QuantizedWeight::quantize(W, options(QuantMethod::kInt8)),
                 peft::ShapeMismatchError)
        << W.sizes();
  }
  QuantizeOptions o;
  o.compute_dtype = torch::kDouble;
  EXPECT_THROW(QuantizedWeight::quantize(torch::randn({4, 64}), o), peft::ConfigError);
}

TEST(QuantizedWeightQuantize, DequantizeEqualsThePrimitivesExactly) {
  torch::manual_seed(0);
  for (const auto& c : kCases) {
    const at::Tensor W = torch::randn({c.out, c.in});
    auto q = make(c, W);
    EXPECT_EQ(q->method(), c.method);
    EXPECT_EQ(q->out_features(), c.out);
    EXPECT_EQ(q->in_features(), c.in);
    EXPECT_EQ(q->compute_dtype(), torch::kFloat) << "defaults to W's dtype";
    EXPECT_EQ(q->q4().nested, c.nested);
    const at::Tensor full = q->dequantize();
    EXPECT_TRUE(bit_equal(full, quant::dequantize_4bit(q->q4(), torch::kFloat))) << name(c);
    // Row ranges that start and end inside blocks, through the CPU decode and the device-generic
    // ATen decode.
    for (auto [r0, r1] :
         std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 4}, {5, c.out}, {c.out - 2, c.out}}) {
      QuantizedWeightTestAccess::force_aten_decode(*q, false);
      const at::Tensor cpu = q->dequantize_rows(r0, r1);
      QuantizedWeightTestAccess::force_aten_decode(*q, true);
      const at::Tensor generic = q->dequantize_rows(r0, r1);
      EXPECT_TRUE(bit_equal(cpu, full.slice(0, r0, r1))) << name(c) << " rows " << r0 << ".." << r1;
      EXPECT_TRUE(bit_equal(generic, full.slice(0, r0, r1)))
          << name(c) << " rows " << r0 << ".." << r1;
    }
    EXPECT_THROW(q->dequantize_rows(2, 1), peft::ShapeMismatchError);
    EXPECT_THROW(q->dequantize_rows(0, c.out + 1), peft::ShapeMismatchError);
  }
  // compute_dtype sets dequantize()'s dtype; the primitive's cast is reproduced exactly.
  QuantizeOptions o = options(QuantMethod::kNF4, true);
  o.compute_dtype = torch::kBFloat16;
  auto q = QuantizedWeight::quantize(torch::randn({8, 64}), o);
  EXPECT_TRUE(bit_equal(q->dequantize(), quant::dequantize_4bit(q->q4(), torch::kBFloat16)));
  EXPECT_EQ(q->q4().dtype, torch::kFloat) << "the original dtype is kept for the quant state";
  // int8: int8_vectorwise_dequant.
  auto q8 = QuantizedWeight::quantize(torch::randn({9, 33}), options(QuantMethod::kInt8));
  EXPECT_TRUE(bit_equal(q8->dequantize(), quant::int8_vectorwise_dequant(q8->q8())));
  EXPECT_TRUE(bit_equal(q8->dequantize_rows(2, 5),
                        quant::int8_vectorwise_dequant(q8->q8()).slice(0, 2, 5)));
}

TEST(QuantizedWeightTiles, TileRowsKeepTilesSmallAndOnWholeBlocks) {
  // Wraps synthetic packed data (quantizing large matrices is slow and irrelevant here).
  const auto wrap = [](int64_t out, int64_t in, int64_t bs) {
    quant::Quantized4bit q;
    const int64_t n = out * in;
    q.packed = torch::zeros({(n + 1) / 2, 1}, torch::kUInt8);
    q.absmax = torch::ones({(n + bs - 1) / bs});
    q.blocksize = bs;
    q.shape = {out, in};
    return QuantizedWeight::from_4bit(q, torch::kFloat);
  };
  struct S {
    int64_t out, in, bs;
  };
  for (const S s : {S{4096, 4096, 64}, S{3000, 100, 64}, S{1000, 100, 256}, S{5000, 29, 64},
                    S{64, 4096, 4096}, S{11008, 4096, 64}, S{4096, 11008, 128}}) {
    const int64_t rows = wrap(s.out, s.in, s.bs)->tile_rows();
    EXPECT_GE(rows, 1);
    EXPECT_LT(rows, s.out);
    EXPECT_EQ(rows * s.in % s.bs, 0) << s.out << "x" << s.in << " bs " << s.bs << ": tile " << rows;
    EXPECT_LE(rows * s.in * 4, 256 * 1024) << s.out << "x" << s.in << ": tile " << rows << " rows";
    EXPECT_GE(rows * s.in * 4, 32 * 1024) << s.out << "x" << s.in << ": tile " << rows << " rows";
  }
  EXPECT_EQ(wrap(4096, 4096, 64)->tile_rows(), 8) << "128 KiB of float32";
  EXPECT_EQ(wrap(37, 29, 64)->tile_rows(), 37) << "a small matrix is one tile";
  // A row longer than the budget: one row per tile (blocks straddle tile borders).
  EXPECT_EQ(wrap(3, 100000, 64)->tile_rows(), 1);
}

// Forward: linear() == x @ dequantize()^T + bias. Only the GEMM's summation order differs (whole
// matrix vs tiles), so float32 agrees to atol 1e-5 (outputs are O(1..10)); rtol 1e-5 covers the
// larger ones.
TEST(QuantizedWeightForward, MatchesDequantizeThenMatmul) {
  torch::manual_seed(1);
  for (const auto& c : kCases) {
    const at::Tensor W = torch::randn({c.out, c.in}) * 0.2;
    auto q = make(c, W);
    const at::Tensor x = torch::randn({2, 3, c.in});
    const at::Tensor b = torch::randn({c.out});
    const at::Tensor ref = torch::nn::functional::linear(x, q->dequantize(), b);
    const at::Tensor y = q->linear(x, b);
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, c.out}));
    EXPECT_EQ(y.scalar_type(), torch::kFloat);
    EXPECT_EQ(mismatch(y, ref, 1e-5, 1e-5), "") << name(c);
    EXPECT_EQ(
        mismatch(q->linear(x, at::Tensor()), torch::matmul(x, q->dequantize().t()), 1e-5, 1e-5), "")
        << name(c) << " without bias";
    QuantizedWeightTestAccess::force_aten_decode(*q, true);
    EXPECT_EQ(mismatch(q->linear(x, b), ref, 1e-5, 1e-5), "") << name(c) << " (ATen decode)";
    // A 1-D input and a single row.
    EXPECT_EQ(mismatch(q->linear(x[0][0], b), ref[0][0], 1e-5, 1e-5), "") << name(c) << " 1-D";
  }
}

// Batches of more than 16 rows run wide tiles (about 8 MiB, a whole number of base tiles): 2053 x
// 1040 makes two, block-aligned with the default base tile and straddling blocks with a forced
// 7-row one.
TEST(QuantizedWeightForward, LargeBatchesUseWideTiles) {
  torch::manual_seed(11);
  auto q =
      QuantizedWeight::quantize(torch::randn({2053, 1040}) * 0.1, options(QuantMethod::kNF4, true));
  const at::Tensor dq = q->dequantize();
  const at::Tensor x = torch::randn({4, 5, 1040});
  const at::Tensor b = torch::randn({2053});
  const at::Tensor gy = torch::randn({4, 5, 2053});
  for (const int64_t tile_rows : {q->tile_rows(), int64_t{7}}) {
    QuantizedWeightTestAccess::set_tile_rows(*q, tile_rows);
    EXPECT_EQ(mismatch(q->linear(x, b), torch::nn::functional::linear(x, dq, b), 1e-4, 1e-5), "")
        << tile_rows;
    EXPECT_EQ(mismatch(q->grad_input(gy), torch::matmul(gy, dq), 1e-4, 1e-5), "") << tile_rows;
  }
}

TEST(QuantizedWeightForward, RejectsMismatchedInputs) {
  auto q = QuantizedWeight::quantize(torch::randn({8, 64}), options(QuantMethod::kNF4));
  EXPECT_THROW(q->linear(torch::randn({2, 63}), at::Tensor()), peft::ShapeMismatchError);
  EXPECT_THROW(q->linear(torch::randn({2, 64}), torch::randn({7})), peft::ShapeMismatchError);
  EXPECT_THROW(q->linear(torch::randn({2, 64}).to(torch::kDouble), at::Tensor()),
               peft::ConfigError);
  EXPECT_THROW(q->grad_input(torch::randn({2, 9})), peft::ShapeMismatchError);
}

// Backward: gradients of x and bias equal those of the dequantize-then-matmul reference; the weight
// has none.
TEST(QuantizedWeightBackward, GradientsMatchTheDequantizedReference) {
  torch::manual_seed(2);
  std::vector<Case4bit> cases = kCases;
  for (auto& c : cases) {
    const at::Tensor W = torch::randn({c.out, c.in}) * 0.2;
    auto q = make(c, W);
    const at::Tensor x0 = torch::randn({2, 3, c.in});
    const at::Tensor b0 = torch::randn({c.out});
    const at::Tensor gy = torch::randn({2, 3, c.out});

    const at::Tensor x = x0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
    const at::Tensor y = q->linear(x, b);
    ASSERT_TRUE(y.requires_grad()) << name(c);
    (y * gy).sum().backward();

    const at::Tensor xr = x0.clone().requires_grad_(true), br = b0.clone().requires_grad_(true);
    (torch::nn::functional::linear(xr, q->dequantize(), br) * gy).sum().backward();

    EXPECT_EQ(mismatch(x.grad(), xr.grad(), 1e-5, 1e-5), "") << name(c);
    EXPECT_EQ(mismatch(b.grad(), br.grad(), 1e-5, 1e-5), "") << name(c);
    EXPECT_EQ(mismatch(q->grad_input(gy), torch::matmul(gy, q->dequantize()), 1e-5, 1e-5), "")
        << name(c);
  }
  // Only x needs a gradient (a frozen bias); and only the bias.
  auto q = QuantizedWeight::quantize(torch::randn({16, 64}), options(QuantMethod::kNF4));
  const at::Tensor x = torch::randn({4, 64}, torch::requires_grad());
  q->linear(x, torch::randn({16})).sum().backward();
  EXPECT_EQ(mismatch(x.grad(), torch::ones({4, 16}).matmul(q->dequantize()), 1e-5, 1e-5), "");
  const at::Tensor b = torch::zeros({16}, torch::requires_grad());
  q->linear(torch::randn({5, 64}), b).sum().backward();
  EXPECT_EQ(mismatch(b.grad(), torch::full({16}, 5.0), 0.0), "");
  // No grad mode: no graph.
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(q->linear(x, b).requires_grad());
}

// LLM.int8 as bitsandbytes' MatMul8bitLt (int8_vectorwise_quant + int8_mixed_scaled_mm), written
// out directly.
namespace {

at::Tensor llm_int8_reference(const at::Tensor& x, const quant::QuantizedInt8& w,
                              const at::Tensor& bias, double threshold) {
  const int64_t in = x.size(-1);
  at::Tensor A = x.reshape({-1, in}).to(torch::kFloat);
  at::Tensor Aq = A.clone();
  std::vector<int64_t> outlier_cols;
  if (threshold > 0) {
    const at::Tensor outliers = A.abs() >= threshold;
    for (int64_t j = 0; j < in; ++j) {
      if (outliers.select(1, j).any().item<bool>()) outlier_cols.push_back(j);
    }
    Aq.masked_fill_(outliers, 0.0);  // A[outliers] = 0 before the row statistics
  }
  const at::Tensor row_stats = std::get<0>(Aq.abs().max(1));
  // Python's `127.0 / row_stats` is row_stats.reciprocal() * 127 (torch.Tensor.__rtruediv__).
  at::Tensor CA = torch::round(Aq * (row_stats.reciprocal() * 127.0).unsqueeze(-1));
  for (int64_t j : outlier_cols) CA.select(1, j).zero_();  // out_row[:, outlier_cols] = 0
  // int8_linear_matmul (exact integers), then int8_mm_dequant with 1 / 127^2.
  const at::Tensor acc = torch::matmul(CA.to(torch::kDouble), w.CB.to(torch::kDouble).t());
  at::Tensor out = acc.to(torch::kFloat) * (row_stats.view({-1, 1}) * w.SCB.view({1, -1})) *
                   (1.0 / (127.0 * 127.0));
  if (bias.defined()) out = out + bias;
  for (int64_t j : outlier_cols) {  // output.addmm(subA, subB), one column at a time
    const at::Tensor w_col = w.CB.select(1, j).to(torch::kFloat) * w.SCB * 7.874015718698502e-3;
    out = out + A.select(1, j).unsqueeze(1) * w_col.unsqueeze(0);
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.CB.size(0);
  return out.view(shape);
}

}  // namespace

TEST(QuantizedWeightInt8, ForwardMatchesTheLLMInt8Formula) {
  torch::manual_seed(3);
  const int64_t out = 300, in = 100;
  const at::Tensor W = torch::randn({out, in}) * 0.1;
  auto q = QuantizedWeight::quantize(W, options(QuantMethod::kInt8));
  EXPECT_EQ(q->method(), QuantMethod::kInt8);
  EXPECT_TRUE(bit_equal(q->q8().CB, quant::int8_vectorwise_quant(W).CB));
  QuantizedWeightTestAccess::set_tile_rows(*q, 7);  // several tiles, a partial last one
  const at::Tensor x = torch::randn({2, 3, in});
  const at::Tensor b = torch::randn({out});
  // No threshold: the same float32 operations on exact integer products, so equal to rounding of
  // the final ops.
  EXPECT_EQ(mismatch(q->linear(x, b), llm_int8_reference(x, q->q8(), b, 0.0), 1e-6, 1e-6), "");
  // Close to the float product (int8 rounding of x and W: ~1% relative).
  EXPECT_EQ(mismatch(q->linear(x, b), torch::nn::functional::linear(x, W, b), 0.05, 0.02), "");

  // Outliers: columns 3 and 50 hold values >= 6 in some rows (only those rows' values are
  // outliers).
  at::Tensor xo = x.clone();
  xo.index_put_({0, 1, 3}, 9.0);
  xo.index_put_({1, 2, 50}, -7.5);
  xo.index_put_({1, 0, 50}, 6.0);  // exactly the threshold: an outlier (>=)
  auto qt = QuantizedWeight::quantize(W, options(QuantMethod::kInt8, false, 64, 6.0));
  EXPECT_EQ(qt->int8_threshold(), 6.0);
  QuantizedWeightTestAccess::set_tile_rows(*qt, 7);
  const at::Tensor yt = qt->linear(xo, b);
  EXPECT_EQ(mismatch(yt, llm_int8_reference(xo, qt->q8(), b, 6.0), 1e-5, 1e-5), "");
  // The decomposition differs from plain int8 (the outliers would dominate those rows' scales) ...
  EXPECT_GT((yt - llm_int8_reference(xo, qt->q8(), b, 0.0)).abs().max().item<float>(), 1e-3);
  // ... and is closer to the float result.
  const at::Tensor exact = torch::nn::functional::linear(xo, W, b);
  EXPECT_LT((yt - exact).abs().max().item<float>(),
            (llm_int8_reference(xo, qt->q8(), b, 0.0) - exact).abs().max().item<float>());
  // No value reaches the threshold: same as without it.
  EXPECT_TRUE(bit_equal(qt->linear(x * 0.1, b), q->linear(x * 0.1, b)));
}

TEST(QuantizedWeightInt8, BackwardUsesTheDequantizedWeight) {
  torch::manual_seed(4);
  auto q = QuantizedWeight::quantize(torch::randn({40, 24}),
                                     options(QuantMethod::kInt8, false, 64, 6.0));
  QuantizedWeightTestAccess::set_tile_rows(*q, 6);
  const at::Tensor x = (torch::randn({3, 24}) * 3).requires_grad_(true);
  const at::Tensor b = torch::zeros({40}, torch::requires_grad());
  const at::Tensor gy = torch::randn({3, 40});
  (q->linear(x, b) * gy).sum().backward();
  EXPECT_EQ(mismatch(x.grad(), gy.matmul(q->dequantize()), 1e-5, 1e-5), "");
  EXPECT_EQ(mismatch(b.grad(), gy.sum(0), 1e-6), "");
}

// Reduced-precision compute dtypes: x, the weight tile and the result are rounded to the compute
// dtype and the GEMM accumulates in float32 (bitsandbytes' Linear4bit: x.to(compute_dtype) @
// dequantize(W).to(compute_dtype)). Output in x's dtype.
TEST(QuantizedWeightForward, ReducedPrecisionComputeDtypes) {
  torch::manual_seed(5);
  const at::Tensor W = torch::randn({300, 100}) * 0.2;
  const at::Tensor b = torch::randn({300});
  const at::Tensor x = torch::randn({2, 3, 100});
  for (const auto dt : {torch::kBFloat16, torch::kHalf}) {
    auto q = QuantizedWeight::quantize(W.to(dt), options(QuantMethod::kNF4, true));
    QuantizedWeightTestAccess::set_tile_rows(*q, 3);
    EXPECT_EQ(q->compute_dtype(), dt);
    const at::Tensor xd = x.to(dt), bd = b.to(dt);
    const at::Tensor y = q->linear(xd, bd);
    EXPECT_EQ(y.scalar_type(), dt);
    // The reference: the same rounded operands in float32, rounded once at the end. Only the
    // summation order differs, so the results agree to one rounding of the output (bfloat16 2^-8,
    // float16 2^-11 relative).
    const at::Tensor ref =
        torch::nn::functional::linear(xd.to(torch::kFloat), q->dequantize().to(torch::kFloat),
                                      bd.to(torch::kFloat))
            .to(dt);
    const double rtol = dt == torch::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
    EXPECT_EQ(mismatch(y, ref, 1e-3, rtol), "") << dt;
    // The CPU decode rounds the tile on the fly; the device-generic path with .to(dtype):
    // bit-identical.
    QuantizedWeightTestAccess::force_aten_decode(*q, true);
    EXPECT_TRUE(bit_equal(q->linear(xd, bd), y)) << dt;
    QuantizedWeightTestAccess::force_aten_decode(*q, false);
    // Backward in the same dtypes.
    const at::Tensor xg = xd.clone().requires_grad_(true);
    const at::Tensor gy = torch::randn({2, 3, 300}).to(dt);
    (q->linear(xg, bd) * gy).sum().backward();
    EXPECT_EQ(xg.grad().scalar_type(), dt);
    EXPECT_EQ(
        mismatch(xg.grad(), gy.to(torch::kFloat).matmul(q->dequantize().to(torch::kFloat)).to(dt),
                 1e-3, rtol),
        "")
        << dt;
  }
  // A float32 weight with bfloat16 input: compute in the compute dtype (float32, as bitsandbytes'
  // Linear4bit casts x to compute_dtype), output bfloat16.
  auto q = QuantizedWeight::quantize(W, options(QuantMethod::kNF4));
  const at::Tensor xb = x.to(torch::kBFloat16);
  const at::Tensor y = q->linear(xb, b);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(bit_equal(y, q->linear(xb.to(torch::kFloat), b).to(torch::kBFloat16)));
  // A float32 input with a bfloat16 compute dtype: x is rounded to bfloat16 first; the output is
  // float32.
  QuantizeOptions o = options(QuantMethod::kNF4);
  o.compute_dtype = torch::kBFloat16;
  auto qb = QuantizedWeight::quantize(W, o);
  const at::Tensor yb = qb->linear(x, b);
  EXPECT_EQ(yb.scalar_type(), torch::kFloat);
  EXPECT_TRUE(bit_equal(yb, qb->linear(xb, b.to(torch::kBFloat16)).to(torch::kFloat)));
}

TEST(QuantizedWeightMemory, NF4IsUnderAThirdOfFloat32) {
  // 1024 x 1024 measured; the footprint is linear in the element count, so the 4096 x 4096 ratio
  // follows.
  const int64_t n = 1024 * 1024;
  auto q = QuantizedWeight::quantize(torch::randn({1024, 1024}), options(QuantMethod::kNF4));
  EXPECT_EQ(q->device(), torch::Device(torch::kCPU));
  // packed n / 2 bytes + float32 absmax per 64 values + the 16-value code book.
  EXPECT_EQ(q->nbytes(), n / 2 + n / 64 * 4 + 16 * 4);
  const auto bytes_for = [](int64_t elems) { return elems / 2 + elems / 64 * 4 + 16 * 4; };
  const int64_t big = int64_t{4096} * 4096;
  EXPECT_LE(static_cast<double>(bytes_for(big)), 0.3 * static_cast<double>(big * 4));
  EXPECT_LE(static_cast<double>(q->nbytes()), 0.3 * static_cast<double>(n * 4));
  // Double quantization: uint8 absmax + nested stats only (tiles decode their own scales), less
  // than plain.
  auto qd = QuantizedWeight::quantize(torch::randn({1024, 1024}), options(QuantMethod::kNF4, true));
  const int64_t nb = n / 64;
  EXPECT_EQ(qd->nbytes(), n / 2 + nb + (nb + 255) / 256 * 4 + 256 * 4 + 16 * 4);
  EXPECT_LT(qd->nbytes(), q->nbytes());
  EXPECT_LE(static_cast<double>(qd->nbytes()), 0.3 * static_cast<double>(n * 4));
  // int8: one byte per value + a float32 scale per row.
  auto q8 = QuantizedWeight::quantize(torch::randn({1024, 1024}), options(QuantMethod::kInt8));
  EXPECT_EQ(q8->nbytes(), n + 1024 * 4);
  // to(CPU) keeps everything working.
  q->to(torch::kCPU);
  EXPECT_EQ(q->nbytes(), n / 2 + n / 64 * 4 + 16 * 4);
}
