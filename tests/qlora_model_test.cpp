// Quantized bases in the model zoo: load_pretrained with LoadOptions.quantize (lm_head stays
// float), checkpoints saved in bitsandbytes' 4-bit / 8-bit serialisation, and LoRA training on a
// quantized Llama.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/safetensors.h"
#include "peft/lora/linear.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/quant/quantized_weight.h"
#include "test_util.h"

namespace {

using peft::quant::QuantMethod;

nlohmann::json tiny_llama() {
  return {{"model_type", "llama"},       {"vocab_size", 97},       {"hidden_size", 64},
          {"intermediate_size", 96},     {"num_hidden_layers", 2}, {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-6},   {"rope_theta", 10000.0},
          {"tie_word_embeddings", false}};
}

// A float checkpoint folder of a random tiny Llama.
void write_float_checkpoint(const peft::test::TempDir& dir) {
  torch::manual_seed(11);
  auto model = peft::models::from_config(tiny_llama().dump());
  peft::io::save_checkpoint_tensors(*model, dir.str());
  peft::test::write_file(dir.str("config.json"), tiny_llama().dump());
}

at::Tensor logits(peft::models::PretrainedModel& m, const at::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return m.forward({ids, {}, {}, nullptr});
}

std::vector<std::pair<std::string, std::shared_ptr<peft::nn::LinearImpl>>> linears(
    peft::models::PretrainedModel& m) {
  std::vector<std::pair<std::string, std::shared_ptr<peft::nn::LinearImpl>>> out;
  for (auto& [name, layer] : peft::nn::lora_layers(m)) {
    if (auto l = std::dynamic_pointer_cast<peft::nn::LinearImpl>(layer)) out.emplace_back(name, l);
  }
  return out;
}

class QuantizedCheckpoint : public ::testing::TestWithParam<QuantMethod> {};

TEST_P(QuantizedCheckpoint, LoadQuantizesAndBitsandbytesFilesRoundTrip) {
  peft::test::TempDir dir, bnb;
  write_float_checkpoint(dir);
  peft::models::LoadOptions lo;
  peft::quant::QuantizeOptions q;
  q.method = GetParam();
  q.double_quant = GetParam() != QuantMethod::kInt8;
  lo.quantize = q;
  auto model = peft::models::load_pretrained(dir.str(), lo);
  auto reference = peft::models::load_pretrained(dir.str());
  int quantized = 0;
  for (auto& [name, layer] : linears(*model)) {
    EXPECT_EQ(layer->is_quantized(), name != "lm_head")
        << name;  // transformers keeps lm_head in float
    quantized += layer->is_quantized() ? 1 : 0;
  }
  EXPECT_EQ(quantized, 14);  // 7 Linear per layer x 2
  const at::Tensor ids = torch::randint(0, 97, {2, 7});
  const at::Tensor lq = logits(*model, ids);
  const at::Tensor lf = logits(*reference, ids);
  EXPECT_GT((lq - lf).abs().max().item<double>(), 0.0);  // quantization changes numbers
  EXPECT_LT((lq - lf).abs().max().item<double>(),
            lf.abs().max().item<double>());  // but not the scale

  // The bitsandbytes serialisation of the same model (as a Hub repo saved with load_in_4bit / 8bit
  // holds it): it loads back without --quantize, bit for bit.
  std::map<std::string, at::Tensor> tensors;
  std::set<std::string> packed;
  for (auto& [name, layer] : linears(*model)) {
    if (!layer->is_quantized()) continue;
    for (auto& [k, t] : layer->quantized_weight()->bnb_state_dict(name + ".")) tensors[k] = t;
    packed.insert(name + ".weight");
  }
  for (auto& item : model->named_parameters()) {
    if (!packed.count(item.key())) tensors[item.key()] = item.value().detach();
  }
  peft::io::save_safetensors(bnb.str("model.safetensors"), tensors);
  nlohmann::json config = tiny_llama();
  config["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                   {"load_in_4bit", GetParam() != QuantMethod::kInt8},
                                   {"load_in_8bit", GetParam() == QuantMethod::kInt8},
                                   {"llm_int8_threshold", 0.0}};
  peft::test::write_file(bnb.str("config.json"), config.dump());
  auto loaded = peft::models::load_pretrained(bnb.str());
  auto a = linears(*model), b = linears(*loaded);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].second->is_quantized(), b[i].second->is_quantized()) << a[i].first;
    EXPECT_TRUE(at::equal(a[i].second->weight(), b[i].second->weight())) << a[i].first;
  }
  EXPECT_TRUE(at::equal(logits(*loaded, ids), lq));
  if (GetParam() == QuantMethod::kInt8) {
    // transformers' default llm_int8_threshold (6.0) applies when the config does not say.
    EXPECT_EQ(b.front().second->quantized_weight()->int8_threshold(), 0.0);
    config["quantization_config"].erase("llm_int8_threshold");
    peft::test::write_file(bnb.str("config.json"), config.dump());
    auto defaulted = peft::models::load_pretrained(bnb.str());
    EXPECT_EQ(linears(*defaulted).front().second->quantized_weight()->int8_threshold(), 6.0);
  }
}

INSTANTIATE_TEST_SUITE_P(All, QuantizedCheckpoint,
                         ::testing::Values(QuantMethod::kNF4, QuantMethod::kFP4,
                                           QuantMethod::kInt8),
                         [](const auto& p) { return peft::quant::to_string(p.param); });

TEST(QuantizedCheckpoint, MalformedQuantStateIsAFormatError) {
  peft::test::TempDir dir, bnb;
  write_float_checkpoint(dir);
  peft::models::LoadOptions lo;
  lo.quantize = peft::quant::QuantizeOptions{};
  auto model = peft::models::load_pretrained(dir.str(), lo);
  std::map<std::string, at::Tensor> tensors;
  for (auto& item : model->named_parameters()) tensors[item.key()] = item.value().detach();
  auto layer = linears(*model).front();
  for (auto& [k, t] : layer.second->quantized_weight()->bnb_state_dict(layer.first + "."))
    tensors[k] = t;
  tensors.erase(layer.first + ".weight.absmax");
  peft::io::save_safetensors(bnb.str("model.safetensors"), tensors);
  peft::test::write_file(bnb.str("config.json"), tiny_llama().dump());
  try {
    peft::models::load_pretrained(bnb.str());
    FAIL() << "expected FormatError";
  } catch (const peft::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("absmax"), std::string::npos) << e.what();
  }
}

TEST(QuantizedLlama, LoraTrainsOnAnNF4Base) {
  peft::test::TempDir dir;
  write_float_checkpoint(dir);
  peft::models::LoadOptions lo;
  lo.quantize = peft::quant::QuantizeOptions{};
  auto model = peft::models::load_pretrained(dir.str(), lo);
  peft::LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = std::string("all-linear");
  auto pm = peft::get_peft_model(model, c);
  model->train();
  std::vector<at::Tensor> params;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  ASSERT_FALSE(params.empty());
  for (auto& p : params) EXPECT_TRUE(at::isFloatingType(p.scalar_type()));
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2));
  torch::manual_seed(3);
  const at::Tensor ids = torch::randint(0, 97, {4, 12});
  auto loss_of = [&]() {
    at::Tensor lg = model->forward({ids, {}, {}, nullptr});
    return at::cross_entropy_loss(lg.narrow(1, 0, 11).reshape({-1, 97}),
                                  ids.narrow(1, 1, 11).reshape({-1}));
  };
  const double first = loss_of().item<double>();
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    at::Tensor loss = loss_of();
    loss.backward();
    opt.step();
  }
  const double last = loss_of().item<double>();
  EXPECT_LT(last, first * 0.7) << first << " -> " << last;
  // The packed base did not move.
  for (auto& [name, layer] : linears(*model)) {
    if (layer->is_quantized()) {
      EXPECT_FALSE(layer->weight().requires_grad()) << name;
    }
  }
}

}  // namespace
