// GPTQ checkpoints: the dequantized weight checked element by element against integer codes packed
// by the format's rules in the test (gptq_pack.cpp), every bit width / format / act-order, the
// fused dequantise-and-multiply against the dense product, and loading a GPTQ checkpoint folder
// (with its refusals).
#include "peft/quant/gptq.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "gptq_pack.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/linear.h"
#include "peft/models/model.h"
#include "peft/quant/quantized_weight.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using peft::quant::GptqFormat;
using peft::quant::QuantizedGptq;
using peft::quant::QuantizedWeight;
using peft::test::message_of;

struct Case {
  int bits;
  int group_size;
  bool desc_act;
  bool v1;
};

std::string case_name(const Case& c) {
  return "bits" + std::to_string(c.bits) + "_g" +
         (c.group_size == -1 ? std::string("all") : std::to_string(c.group_size)) +
         (c.desc_act ? "_actorder" : "") + (c.v1 ? "_v1" : "_v2");
}

QuantizedGptq wrap(const peft::test::GptqPacked& p, const Case& c) {
  QuantizedGptq q;
  q.qweight = p.qweight;
  q.qzeros = p.qzeros;
  q.scales = p.scales;
  q.g_idx = p.g_idx;
  q.options.bits = c.bits;
  q.options.group_size = c.group_size;
  q.options.desc_act = c.desc_act;
  q.options.format = c.v1 ? GptqFormat::kV1 : GptqFormat::kV2;
  return q;
}

// Random codes, zero points (every value, 0 and 2^bits - 1 included) and float16 scales.
peft::test::GptqCodes random_codes(const Case& c, int64_t out, int64_t in) {
  const int64_t maxq = (int64_t{1} << c.bits) - 1;
  const int64_t gs = c.group_size == -1 ? in : c.group_size;
  const int64_t groups = (in + gs - 1) / gs;
  peft::test::GptqCodes k;
  k.q = torch::randint(0, maxq + 1, {in, out}, torch::kInt64);
  k.z = torch::randint(0, maxq + 1, {groups, out}, torch::kInt64);
  k.z[0][0] = 0;  // a zero point of 0: v1 stores it as -1 (a borrow across the packed word)
  k.z[groups - 1][out - 1] = maxq;
  k.scales = (torch::rand({groups, out}) * 0.05 + 1e-3).to(torch::kHalf);
  const at::Tensor order =
      c.desc_act ? torch::randperm(in, torch::kInt64) : torch::arange(in, torch::kInt64);
  k.g_idx = torch::empty({in}, torch::kInt64);
  for (int64_t pos = 0; pos < in; ++pos) k.g_idx[order[pos].item<int64_t>()] = pos / gs;
  return k;
}

class GptqDequant : public ::testing::TestWithParam<Case> {};

TEST_P(GptqDequant, MatchesHandPackedCodesElementByElement) {
  const Case c = GetParam();
  torch::manual_seed(7);
  const int64_t out = 48, in = 96;
  const auto codes = random_codes(c, out, in);
  const auto packed =
      peft::test::pack_gptq(codes.q, codes.z, codes.scales, codes.g_idx, c.bits, c.v1);
  const QuantizedGptq q = wrap(packed, c);
  // The unpacked codes and zero points are the integers that were packed.
  EXPECT_TRUE(at::equal(peft::quant::gptq_unpack_codes(q).to(torch::kInt64), codes.q));
  EXPECT_TRUE(at::equal(peft::quant::gptq_unpack_zeros(q).to(torch::kInt64), codes.z));
  // Every element: scales[g, o] * (q[i, o] - zero[g, o]), exact in float32.
  const at::Tensor expected = peft::test::dequantize_by_hand(codes);
  auto w = QuantizedWeight::from_gptq(q, at::kFloat);
  EXPECT_EQ(w->method(), peft::quant::QuantMethod::kGPTQ);
  EXPECT_EQ(w->out_features(), out);
  EXPECT_EQ(w->in_features(), in);
  const at::Tensor fast = w->dequantize();  // the CPU decoder
  ASSERT_EQ(fast.sizes(), expected.sizes());
  EXPECT_TRUE(at::equal(fast, expected)) << peft::test::compare(fast, expected, 0, 0);
  EXPECT_TRUE(at::equal(peft::quant::gptq_dequantize(q, at::kFloat), expected));  // ATen path
  // Row ranges (the fused kernel's tiles) are the same rows.
  EXPECT_TRUE(at::equal(w->dequantize_rows(5, 29), expected.slice(0, 5, 29)));
  // In float16 compute, the same values rounded to float16.
  EXPECT_TRUE(
      at::equal(QuantizedWeight::from_gptq(q, at::kHalf)->dequantize(), expected.to(at::kHalf)));
  // The packed tensors come back as they went in (what a save would write).
  const auto sd = peft::quant::gptq_state_dict(w->gptq(), "layer.");
  ASSERT_EQ(sd.size(), 4u);
  EXPECT_TRUE(at::equal(sd[0].second, packed.qweight));
  EXPECT_TRUE(at::equal(sd[1].second, packed.qzeros));
}

INSTANTIATE_TEST_SUITE_P(Formats, GptqDequant,
                         ::testing::Values(Case{4, 32, false, true}, Case{4, 32, false, false},
                                           Case{4, 32, true, true}, Case{4, -1, false, true},
                                           Case{8, 32, false, true}, Case{8, 16, true, false},
                                           Case{2, 32, false, true}, Case{4, 40, false, false}),
                         [](const auto& p) { return case_name(p.param); });

TEST(GptqDequant, V1ZeroPointsOfOneOrMoreAlsoReadAsPackedByAutoGptq) {
  // AutoGPTQ's packer subtracts one from every zero point before OR-ing them into words: with no
  // zero point of 0 there is no borrow, and the word-wise addition gives the zero points back.
  torch::manual_seed(3);
  const Case c{4, 32, false, true};
  auto codes = random_codes(c, 16, 64);
  codes.z = torch::randint(1, 16, codes.z.sizes(), torch::kInt64);
  const auto minus_one = peft::test::pack_gptq(codes.q, codes.z - 1, codes.scales, codes.g_idx, 4,
                                               /*v1=*/false);  // (z - 1) packed field by field
  const QuantizedGptq q = wrap(minus_one, c);
  EXPECT_TRUE(at::equal(peft::quant::gptq_unpack_zeros(q).to(torch::kInt64), codes.z));
  EXPECT_TRUE(at::equal(QuantizedWeight::from_gptq(q, at::kFloat)->dequantize(),
                        peft::test::dequantize_by_hand(codes)));
}

TEST(GptqLinear, FusedProductAndInputGradientMatchTheDenseWeight) {
  torch::manual_seed(5);
  const Case c{4, 64, true, true};
  const int64_t out = 64, in = 2048;  // several tiles of rows
  const auto codes = random_codes(c, out, in);
  const auto packed = peft::test::pack_gptq(codes.q, codes.z, codes.scales, codes.g_idx, 4, true);
  auto w = QuantizedWeight::from_gptq(wrap(packed, c), at::kFloat);
  ASSERT_LT(w->tile_rows(), out);
  const at::Tensor W = peft::test::dequantize_by_hand(codes);
  const at::Tensor bias = torch::randn({out});
  for (int64_t batch : {3, 40}) {  // the small-batch and the wide-tile paths
    const at::Tensor x = torch::randn({batch, 2, in}, torch::requires_grad());
    const at::Tensor y = w->linear(x, bias);
    const at::Tensor ref = torch::matmul(x.detach(), W.t()) + bias;
    EXPECT_TRUE(torch::allclose(y, ref, 1e-4, 1e-4)) << peft::test::compare(y, ref, 1e-4, 1e-4);
    const at::Tensor gy = torch::randn_like(y);
    y.backward(gy);
    const at::Tensor gx_ref = torch::matmul(gy, W);
    EXPECT_TRUE(torch::allclose(x.grad(), gx_ref, 1e-4, 1e-4));
  }
}

TEST(GptqLinear, RefusesMalformedTensorsNamingThem) {
  torch::manual_seed(1);
  const Case c{4, 32, false, true};
  const auto codes = random_codes(c, 16, 64);
  const auto packed = peft::test::pack_gptq(codes.q, codes.z, codes.scales, codes.g_idx, 4, true);
  const auto take = [&](const std::function<void(std::map<std::string, at::Tensor>&)>& edit,
                        int bits = 4) {
    std::map<std::string, at::Tensor> t = {{"l.qweight", packed.qweight},
                                           {"l.qzeros", packed.qzeros},
                                           {"l.scales", packed.scales},
                                           {"l.g_idx", packed.g_idx}};
    edit(t);
    peft::quant::GptqOptions o;
    o.bits = bits;
    o.group_size = 32;
    return message_of([&] { peft::quant::take_gptq_tensors(t, "l.", {16, 64}, o, "f"); });
  };
  EXPECT_EQ(take([](auto&) {}), "(no exception)");
  EXPECT_NE(take([](auto& t) {
              t["l.qweight"] = t["l.qweight"].narrow(0, 0, 4);
            }).find("\"l.qweight\" has shape"),
            std::string::npos);
  EXPECT_NE(take([](auto& t) {
              t["l.qzeros"] = t["l.qzeros"].to(torch::kInt64);
            }).find("\"l.qzeros\" is Long"),
            std::string::npos);
  EXPECT_NE(take([](auto& t) { t.erase("l.scales"); }).find("\"l.scales\" is missing"),
            std::string::npos);
  EXPECT_NE(take([](auto& t) {
              t["l.g_idx"] = t["l.g_idx"].clone().fill_(2);
            }).find("holds group 2; expected groups in [0, 2)"),
            std::string::npos);
  EXPECT_NE(take([](auto&) {}, 3).find("3-bit"), std::string::npos);
  // A missing g_idx means the plain order (checkpoints from before act-order).
  std::map<std::string, at::Tensor> t = {
      {"l.qweight", packed.qweight}, {"l.qzeros", packed.qzeros}, {"l.scales", packed.scales}};
  peft::quant::GptqOptions o;
  o.group_size = 32;
  auto q = peft::quant::take_gptq_tensors(t, "l.", {16, 64}, o, "f");
  ASSERT_TRUE(q.has_value());
  EXPECT_TRUE(at::equal(q->g_idx, packed.g_idx));
  EXPECT_TRUE(t.empty());
}

// A GPTQ checkpoint folder made from the embedded demo model.
struct GptqDemo {
  peft::test::TempDir dir;
  fs::path demo = fs::path(PEFT_FIXTURES_DIR) / ".." / ".." / "assets" / "demo" / "model";
  explicit GptqDemo(bool desc_act = false, bool v1 = true) {
    torch::manual_seed(2);
    peft::test::write_gptq_checkpoint(demo.string(), dir.str(), 4, 32, desc_act, v1);
  }
};

TEST(GptqCheckpoint, LoadsEveryDecoderLinearQuantizedAndComputesWithItsWeights) {
  GptqDemo g(/*desc_act=*/true);
  auto model = peft::models::load_pretrained(g.dir.str());
  auto reference = peft::models::load_pretrained(g.demo.string());
  int gptq = 0;
  const auto tensors = peft::io::load_safetensors(g.dir.str("model.safetensors"));
  auto ref_layers = peft::nn::lora_layers(*reference);
  std::map<std::string, std::shared_ptr<peft::nn::LoraLayerImpl>> ref_by_name(ref_layers.begin(),
                                                                              ref_layers.end());
  for (auto& [name, layer] : peft::nn::lora_layers(*model)) {
    auto linear = std::dynamic_pointer_cast<peft::nn::LinearImpl>(layer);
    if (!linear || !linear->is_quantized()) continue;
    ++gptq;
    const auto qw = linear->quantized_weight();
    EXPECT_EQ(qw->method(), peft::quant::QuantMethod::kGPTQ);
    EXPECT_TRUE(at::equal(linear->weight(), tensors.at(name + ".qweight")));
    // The reference model gets the dequantized weights: the two must then compute the same.
    torch::NoGradGuard no_grad;
    ref_by_name.at(name)->weight().copy_(qw->dequantize());
  }
  EXPECT_EQ(gptq, 28);  // 7 Linear layers x 4 decoder layers; lm_head stays float
  const at::Tensor ids = torch::randint(0, 640, {2, 9});
  torch::NoGradGuard no_grad;
  const at::Tensor a = model->forward({ids, {}, {}, nullptr});
  const at::Tensor b = reference->forward({ids, {}, {}, nullptr});
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << peft::test::compare(a, b, 1e-4, 1e-4);
}

TEST(GptqCheckpoint, ConfigAndTensorErrorsAreTyped) {
  GptqDemo g;
  const auto config_path = g.dir.str("config.json");
  const nlohmann::json original = nlohmann::json::parse(peft::test::read_file(config_path));
  const auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = original;
    edit(c);
    peft::test::write_file(config_path, c.dump());
    return message_of([&] { peft::models::load_pretrained(g.dir.str()); });
  };
  EXPECT_EQ(with([](auto&) {}), "(no exception)");
  EXPECT_NE(with([](auto& c) { c["quantization_config"]["bits"] = 3; }).find("3-bit"),
            std::string::npos);
  EXPECT_NE(with([](auto& c) {
              c["quantization_config"]["checkpoint_format"] = "marlin";
            }).find("checkpoint_format \"marlin\" is not supported"),
            std::string::npos);
  EXPECT_NE(with([](auto& c) {
              c["quantization_config"]["quant_method"] = "awq";
            }).find("quant_method \"awq\" is not supported"),
            std::string::npos);
  EXPECT_NE(
      with([](auto& c) { c["quantization_config"]["group_size"] = 64; }).find("qzeros\" has shape"),
      std::string::npos);
  nlohmann::json bad = original;
  bad["quantization_config"]["bits"] = "four";
  peft::test::write_file(config_path, bad.dump());
  EXPECT_THROW(peft::models::load_pretrained(g.dir.str()), peft::ConfigError);
}

}  // namespace
