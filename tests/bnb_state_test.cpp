// QuantizedWeight's bitsandbytes state dict (src/quant/bnb_state.cpp): the keys and JSON quant
// state bitsandbytes writes, a bit-exact round trip, validation of malformed entries, and wrapping
// existing packed data.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "peft/error.h"
#include "quantized_weight_cases.h"

namespace quant = peft::quant;
using quant::QuantizedWeight;
using quant::QuantMethod;
using namespace peft::test::quant;  // the shared cases and helpers

namespace {

std::map<std::string, at::Tensor> to_map(
    const std::vector<std::pair<std::string, at::Tensor>>& entries) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [k, v] : entries) m[k] = v.clone();  // like tensors read back from a file
  return m;
}

std::string json_of(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
}

at::Tensor json_tensor(const std::string& s) {
  at::Tensor t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  std::copy(s.begin(), s.end(), t.data_ptr<uint8_t>());
  return t;
}

const std::vector<int64_t> kShape = {37, 29};

}  // namespace

TEST(QuantizedWeightBnb, StateDictHasBitsandbytesKeysAndJson) {
  torch::manual_seed(6);
  auto q = QuantizedWeight::quantize(torch::randn({37, 29}).to(torch::kBFloat16),
                                     options(QuantMethod::kNF4));
  const auto sd = q->bnb_state_dict("model.layers.0.mlp.up_proj.");
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  EXPECT_EQ(keys,
            (std::vector<std::string>{
                "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight.absmax",
                "model.layers.0.mlp.up_proj.weight.quant_map",
                "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"}));
  EXPECT_EQ(sd[0].second.sizes(), (std::vector<int64_t>{(37 * 29 + 1) / 2, 1}));
  EXPECT_EQ(sd[0].second.scalar_type(), torch::kUInt8);
  EXPECT_EQ(sd[1].second.scalar_type(), torch::kFloat);
  EXPECT_EQ(sd[1].second.numel(), (37 * 29 + 63) / 64);
  EXPECT_TRUE(bit_equal(sd[2].second, torch::tensor(quant::nf4_code())));
  // json.dumps of {"quant_type", "blocksize", "dtype", "shape"} as pack_dict_to_tensor writes it.
  EXPECT_EQ(json_of(sd[3].second),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [37, 29]})");

  auto qn =
      QuantizedWeight::quantize(torch::randn({37, 29}), options(QuantMethod::kFP4, true, 128));
  const auto sdn = qn->bnb_state_dict("");
  ASSERT_EQ(sdn.size(), 6u);
  EXPECT_EQ(sdn[3].first, "weight.nested_absmax");
  EXPECT_EQ(sdn[4].first, "weight.nested_quant_map");
  EXPECT_EQ(sdn[5].first, "weight.quant_state.bitsandbytes__fp4");
  EXPECT_EQ(sdn[1].second.scalar_type(), torch::kUInt8);
  const std::string js = json_of(sdn[5].second);
  EXPECT_EQ(
      js.rfind(R"({"quant_type": "fp4", "blocksize": 128, "dtype": "float32", "shape": [37, 29], )"
               R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )",
               0),
      0u)
      << js;

  auto q8 = QuantizedWeight::quantize(torch::randn({5, 7}), options(QuantMethod::kInt8));
  const auto sd8 = q8->bnb_state_dict("lin.");
  ASSERT_EQ(sd8.size(), 2u);
  EXPECT_EQ(sd8[0].first, "lin.weight");
  EXPECT_EQ(sd8[0].second.scalar_type(), torch::kInt8);
  EXPECT_EQ(sd8[1].first, "lin.SCB");
  EXPECT_EQ(sd8[1].second.scalar_type(), torch::kFloat);
}

TEST(QuantizedWeightBnb, RoundTripIsBitExact) {
  torch::manual_seed(7);
  for (const auto& c : kCases) {
    auto q = QuantizedWeight::quantize(torch::randn({c.out, c.in}) * 3,
                                       options(c.method, c.nested, c.blocksize));
    auto m = to_map(q->bnb_state_dict("a.b."));
    m["a.b.bias"] = torch::randn({c.out});
    m["other.weight"] = torch::randn({2, 2});
    const auto r =
        quant::take_bnb_weight(m, "a.b.", {c.out, c.in}, torch::kFloat, "model.safetensors");
    ASSERT_TRUE(r.has_value()) << name(c);
    const auto& p = **r;
    EXPECT_EQ(p.method(), c.method);
    EXPECT_TRUE(bit_equal(p.q4().packed, q->q4().packed)) << name(c);
    EXPECT_TRUE(bit_equal(p.q4().absmax, q->q4().absmax)) << name(c);
    EXPECT_EQ(p.q4().blocksize, c.blocksize);
    EXPECT_EQ(p.q4().nested, c.nested);
    EXPECT_EQ(p.q4().shape, q->q4().shape);
    EXPECT_EQ(p.q4().dtype, q->q4().dtype);
    if (c.nested) {
      EXPECT_TRUE(bit_equal(p.q4().nested_absmax, q->q4().nested_absmax)) << name(c);
      EXPECT_TRUE(bit_equal(p.q4().nested_code, q->q4().nested_code)) << name(c);
      EXPECT_EQ(p.q4().nested_blocksize, q->q4().nested_blocksize);
      EXPECT_EQ(p.q4().offset, q->q4().offset) << name(c) << ": the offset survives its JSON text";
    }
    EXPECT_TRUE(bit_equal(p.dequantize(), q->dequantize())) << name(c);
    // Consumed entries are erased; the rest stays.
    std::vector<std::string> left;
    for (const auto& [k, v] : m) left.push_back(k);
    EXPECT_EQ(left, (std::vector<std::string>{"a.b.bias", "other.weight"})) << name(c);
  }
  // int8 (+ Linear8bitLt's weight_format, ignored).
  auto q8 = QuantizedWeight::quantize(torch::randn({5, 7}), options(QuantMethod::kInt8));
  auto m = to_map(q8->bnb_state_dict("l."));
  m["l.weight_format"] = torch::tensor({0}, torch::kUInt8);
  const auto r = quant::take_bnb_weight(m, "l.", {5, 7}, torch::kBFloat16, "model.safetensors");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ((*r)->method(), QuantMethod::kInt8);
  EXPECT_EQ((*r)->compute_dtype(), torch::kBFloat16);
  EXPECT_TRUE(bit_equal((*r)->q8().CB, q8->q8().CB));
  EXPECT_TRUE(bit_equal((*r)->q8().SCB, q8->q8().SCB));
  EXPECT_TRUE(m.empty());
}

TEST(QuantizedWeightBnb, TheOffsetsJsonTextRoundTrips) {
  // Offsets across magnitudes (Python's repr switches to exponent notation below 1e-4).
  for (const float offset : {0.0f, 1.0f, 0.0123456789f, 3.0e-5f, 1234.5678f, 7.0e-8f, 0.1f}) {
    auto q = QuantizedWeight::quantize(torch::randn({4, 64}), options(QuantMethod::kNF4, true));
    quant::Quantized4bit q4 = q->q4();
    q4.offset = offset;
    auto w = QuantizedWeight::from_4bit(q4, torch::kFloat);
    auto m = to_map(w->bnb_state_dict(""));
    const std::string js = json_of(m.at("weight.quant_state.bitsandbytes__nf4"));
    const auto r = quant::take_bnb_weight(m, "", {4, 64}, torch::kFloat, "f");
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ((*r)->q4().offset, offset) << js;
  }
}

TEST(QuantizedWeightBnb, FloatWeightIsNotQuantized) {
  std::map<std::string, at::Tensor> m = {{"l.weight", torch::randn({37, 29})},
                                         {"l.bias", torch::randn({37})}};
  EXPECT_FALSE(quant::take_bnb_weight(m, "l.", kShape, torch::kFloat, "f").has_value());
  EXPECT_EQ(m.size(), 2u);
  EXPECT_FALSE(quant::take_bnb_weight(m, "absent.", kShape, torch::kFloat, "f").has_value());
}

TEST(QuantizedWeightBnb, MalformedEntriesAreFormatErrors) {
  torch::manual_seed(8);
  auto q = QuantizedWeight::quantize(torch::randn(kShape), options(QuantMethod::kNF4, true));
  const auto good = to_map(q->bnb_state_dict("l."));
  const std::string qs = "l.weight.quant_state.bitsandbytes__nf4";
  const auto expect_error = [&](std::map<std::string, at::Tensor> m, const std::string& key,
                                const std::string& what) {
    try {
      quant::take_bnb_weight(m, "l.", kShape, torch::kFloat, "model-00001.safetensors");
      ADD_FAILURE() << what << ": no error";
    } catch (const peft::FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("model-00001.safetensors"), std::string::npos) << what << ": " << msg;
      EXPECT_NE(msg.find("\"" + key + "\""), std::string::npos) << what << ": " << msg;
    }
  };
  auto m = good;
  m.erase("l.weight.absmax");
  expect_error(m, "l.weight.absmax", "missing absmax");
  m = good;
  m["l.weight"] = m["l.weight"].slice(0, 1);
  expect_error(m, "l.weight", "wrong packed size");
  m = good;
  m[qs] = json_tensor(R"({"quant_type": "nf4", "blocksize": 64, )");
  expect_error(m, qs, "truncated JSON");
  m = good;
  m[qs] = json_tensor("[1, 2]");
  expect_error(m, qs, "JSON not an object");
  m = good;
  m[qs] = json_tensor(
      R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [37, 29]})");
  expect_error(m, qs, "quant_type differs from the key");
  m = good;
  m[qs] = json_tensor(
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [29, 37], )"
      R"("nested_blocksize": 256, "nested_offset": 0.5})");
  expect_error(m, qs, "shape differs from the layer");
  m = good;
  m[qs] = json_tensor(
      R"({"quant_type": "nf4", "blocksize": 96, "dtype": "float32", "shape": [37, 29], )"
      R"("nested_blocksize": 256, "nested_offset": 0.5})");
  expect_error(m, qs, "bad blocksize");
  m = good;
  m[qs] =
      json_tensor(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [37, 29], )"
                  R"("nested_blocksize": 256, "nested_offset": 0.5})");
  expect_error(m, qs, "bad dtype");
  m = good;
  m.erase("l.weight.nested_absmax");
  expect_error(m, "l.weight.nested_absmax", "missing nested absmax");
  m = good;
  m["l.weight.quant_map"] = torch::linspace(-1, 1, 16);
  expect_error(m, "l.weight.quant_map", "foreign code book");
  m = good;
  m["l.weight.quant_state.bitsandbytes__fp4"] = m[qs];
  expect_error(m, "l.weight", "two quant states");
  m = good;
  m.erase(qs);
  expect_error(m, qs, "no quant state");
  m = good;
  m.erase("l.weight");
  expect_error(m, "l.weight", "quant state without weight");
  // int8
  auto q8 = QuantizedWeight::quantize(torch::randn(kShape), options(QuantMethod::kInt8));
  auto m8 = to_map(q8->bnb_state_dict("l."));
  m8.erase("l.SCB");
  expect_error(m8, "l.SCB", "missing SCB");
  m8 = to_map(q8->bnb_state_dict("l."));
  m8["l.SCB"] = torch::ones({36});
  expect_error(m8, "l.SCB", "short SCB");
  m8 = to_map(q8->bnb_state_dict("l."));
  m8["l.weight"] = torch::zeros({29, 37}, torch::kInt8);
  expect_error(m8, "l.weight", "transposed int8 weight");
  // Nothing is erased on failure.
  m = good;
  m.erase("l.weight.quant_map");
  const size_t before = m.size();
  EXPECT_THROW(quant::take_bnb_weight(m, "l.", kShape, torch::kFloat, "f"), peft::FormatError);
  EXPECT_EQ(m.size(), before);
}

TEST(QuantizedWeightWrap, FromExistingDataValidatesShapes) {
  torch::manual_seed(9);
  auto q = QuantizedWeight::quantize(torch::randn({37, 29}), options(QuantMethod::kNF4));
  quant::Quantized4bit q4 = q->q4();
  auto w = QuantizedWeight::from_4bit(q4, torch::kFloat);
  EXPECT_TRUE(bit_equal(w->dequantize(), q->dequantize()));
  auto bad = q4;
  bad.shape = {37 * 29};
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::ShapeMismatchError);
  bad = q4;
  bad.packed = q4.packed.slice(0, 1);
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::ShapeMismatchError);
  bad = q4;
  bad.absmax = q4.absmax.slice(0, 1);
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::ShapeMismatchError);
  bad = q4;
  bad.packed = q4.packed.to(torch::kInt8);
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::FormatError);
  bad = q4;
  bad.blocksize = 32;
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::FormatError);
  bad = q4;
  bad.nested = true;  // a float32 absmax claimed to be double-quantized
  EXPECT_THROW(QuantizedWeight::from_4bit(bad, torch::kFloat), peft::FormatError);

  quant::QuantizedInt8 q8 = quant::int8_vectorwise_quant(torch::randn({5, 7}));
  auto w8 = QuantizedWeight::from_int8(q8, torch::kFloat, 6.0);
  EXPECT_EQ(w8->int8_threshold(), 6.0);
  EXPECT_THROW(QuantizedWeight::from_int8({q8.CB.reshape({35}), q8.SCB}, torch::kFloat),
               peft::ShapeMismatchError);
  EXPECT_THROW(QuantizedWeight::from_int8({q8.CB, q8.SCB.slice(0, 1)}, torch::kFloat),
               peft::ShapeMismatchError);
  EXPECT_THROW(QuantizedWeight::from_int8({q8.CB.to(torch::kUInt8), q8.SCB}, torch::kFloat),
               peft::FormatError);
  EXPECT_THROW(QuantizedWeight::from_int8(q8, torch::kFloat, -1.0), peft::ConfigError);
  EXPECT_THROW(w8->q4(), peft::Error);
  EXPECT_THROW(w->q8(), peft::Error);
}
