// Loading Hugging Face checkpoint folders: single file, sharded index, half-precision weights,
// --dtype, and the errors for missing / mis-shaped tensors and unknown architectures;
// models::save_pretrained as the counterpart of load_pretrained.
#include "peft/io/hf_checkpoint.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::compare;

namespace {

class HfCheckpoint : public ::testing::Test {
 protected:
  fs::path base = peft::test::fixture("golden/model-llama/base");
  peft::test::TempDir tmp;

  torch::Tensor logits(const std::string& dir,
                       std::optional<c10::ScalarType> dtype = std::nullopt) {
    torch::NoGradGuard no_grad;
    peft::models::LoadOptions o;
    o.dtype = dtype;
    auto model = peft::models::load_pretrained(dir, o);
    peft::models::ForwardInput in;
    in.input_ids =
        peft::io::load_safetensors(peft::test::fixture("golden/model-llama/inputs.safetensors"))
            .at("input_ids");
    return model->forward(in).to(torch::kFloat);
  }
  // A copy of the base folder whose weights are replaced by `tensors` (written as one file).
  fs::path with_weights(const std::map<std::string, torch::Tensor>& tensors) {
    const fs::path dir = tmp.path() / ("m" + std::to_string(counter_++));
    fs::create_directories(dir);
    fs::copy_file(base / "config.json", dir / "config.json");
    peft::io::save_safetensors((dir / "model.safetensors").string(), tensors);
    return dir;
  }
  std::map<std::string, torch::Tensor> weights() {
    std::map<std::string, torch::Tensor> out;
    for (auto& [k, v] : peft::io::load_safetensors((base / "model.safetensors").string()))
      out[k] = v.clone();
    return out;
  }

 private:
  int counter_ = 0;
};

TEST_F(HfCheckpoint, ShardedIndexGivesTheSameModel) {
  const auto reference = logits(base.string());
  const fs::path dir = tmp.path() / "sharded";
  fs::create_directories(dir);
  fs::copy_file(base / "config.json", dir / "config.json");
  std::map<std::string, torch::Tensor> shard1, shard2;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (auto& [k, v] : weights()) {
    const std::string file =
        (i++ % 2 == 0) ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    (i % 2 ? shard1 : shard2)[k] = v;
    index["weight_map"][k] = file;
  }
  peft::io::save_safetensors((dir / "model-00001-of-00002.safetensors").string(), shard1);
  peft::io::save_safetensors((dir / "model-00002-of-00002.safetensors").string(), shard2);
  peft::test::write_file((dir / "model.safetensors.index.json").string(), index.dump());
  EXPECT_EQ(compare(logits(dir.string()), reference, 0.0), "");

  fs::remove(dir / "model-00002-of-00002.safetensors");
  EXPECT_THROW(logits(dir.string()), peft::FormatError);
}

TEST_F(HfCheckpoint, HalfPrecisionWeightsLoadAndDtypeChoiceApplies) {
  const auto reference = logits(base.string());
  auto w = weights();
  for (auto& [k, v] : w) v = v.to(torch::kBFloat16);
  const fs::path bf16 = with_weights(w);
  // Stored bf16, computed in float32 (the default): close to the float32 reference.
  EXPECT_EQ(compare(logits(bf16.string()), reference, 5e-2, 5e-2), "");
  // Computed in bfloat16: parameters are bf16.
  peft::models::LoadOptions o;
  o.dtype = torch::kBFloat16;
  auto model = peft::models::load_pretrained(base.string(), o);
  for (const auto& p : model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(compare(logits(base.string(), torch::kBFloat16), reference, 0.15, 0.05), "");
  auto f16 = weights();
  for (auto& [k, v] : f16) v = v.to(torch::kHalf);
  EXPECT_EQ(compare(logits(with_weights(f16).string()), reference, 5e-3, 5e-3), "");
}

TEST_F(HfCheckpoint, MissingAndMisShapedTensorsAreAllReported) {
  auto w = weights();
  w.erase("model.layers.0.mlp.up_proj.weight");
  w.erase("model.norm.weight");
  try {
    logits(with_weights(w).string());
    FAIL() << "expected FormatError";
  } catch (const peft::FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.0.mlp.up_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("2 tensor(s) missing"), std::string::npos) << msg;
  }
  auto s = weights();
  s["model.layers.1.self_attn.q_proj.weight"] = torch::zeros({3, 3});
  s["lm_head.weight"] = torch::zeros({7, 64});
  try {
    logits(with_weights(s).string());
    FAIL() << "expected ShapeMismatchError";
  } catch (const peft::ShapeMismatchError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("q_proj.weight\": (3, 3) in the checkpoint"), std::string::npos) << msg;
    EXPECT_NE(msg.find("lm_head.weight"), std::string::npos) << msg;
  }
  auto extra = weights();
  extra["model.layers.9.unused.weight"] = torch::zeros({2});
  peft::ScopedWarningCapture warnings;
  logits(with_weights(extra).string());
  EXPECT_TRUE(warnings.contains("model.layers.9.unused.weight"));
}

TEST_F(HfCheckpoint, SavePretrainedRoundTripsAndWritesTiedWeightsOnce) {
  const fs::path out = tmp.path() / "saved";
  auto model = peft::models::load_pretrained(base.string());
  peft::models::save_pretrained(*model, out.string());
  EXPECT_EQ(peft::test::read_file((out / "config.json").string()), model->config_json());
  EXPECT_EQ(compare(logits(out.string()), logits(base.string()), 0), "");

  // A tied output head shares the embedding's tensor: written once (transformers does the same),
  // filled from the embedding on load.
  nlohmann::json config = nlohmann::json::parse(model->config_json());
  config["tie_word_embeddings"] = true;
  auto tied = peft::models::from_config(config.dump());
  ASSERT_FALSE(tied->tied_weights().empty());
  const fs::path tied_dir = tmp.path() / "tied";
  peft::models::save_pretrained(*tied, tied_dir.string());
  const auto file = peft::io::load_safetensors((tied_dir / "model.safetensors").string());
  EXPECT_FALSE(file.count("lm_head.weight"));
  EXPECT_TRUE(file.count("model.embed_tokens.weight"));
  auto reloaded = peft::models::load_pretrained(tied_dir.string());
  const auto params = reloaded->named_parameters();
  EXPECT_TRUE(params["lm_head.weight"].is_same(params["model.embed_tokens.weight"]));
  EXPECT_TRUE(at::equal(params["model.embed_tokens.weight"],
                        tied->named_parameters()["model.embed_tokens.weight"]));
}

TEST_F(HfCheckpoint, UnknownArchitectureListsTheSupportedOnes) {
  const fs::path dir = tmp.path() / "t5";
  fs::create_directories(dir);
  peft::test::write_file((dir / "config.json").string(), R"({"model_type": "t5", "d_model": 8})");
  try {
    peft::models::load_pretrained(dir.string());
    FAIL() << "expected ConfigError";
  } catch (const peft::ConfigError& e) {
    const std::string msg = e.what();
    for (const auto& t : peft::models::supported_model_types())
      EXPECT_NE(msg.find(t), std::string::npos) << t;
  }
  EXPECT_THROW(peft::models::load_pretrained((tmp.path() / "nothing").string()), peft::FormatError);
  peft::test::write_file((dir / "config.json").string(), "{not json");
  EXPECT_THROW(peft::models::load_pretrained(dir.string()), peft::ConfigError);
  peft::test::write_file((dir / "config.json").string(),
                         R"({"model_type": "llama", "x": )" + std::string(100000, '[') + "}");
  EXPECT_THROW(peft::models::load_pretrained(dir.string()), peft::ConfigError);
}

// Sizes are checked against the mapped checkpoint and the machine's memory before the model is
// built (num_hidden_layers: 3000 on this 2-layer checkpoint took seconds and gigabytes).
TEST_F(HfCheckpoint, AbsurdConfigSizesFailBeforeAllocating) {
  auto config = nlohmann::json::parse(peft::test::read_file((base / "config.json").string()));
  const auto with = [&](const char* key, const nlohmann::json& value) {
    const fs::path dir = with_weights(weights());
    auto c = config;
    c[key] = value;
    peft::test::write_file((dir / "config.json").string(), c.dump());
    return dir.string();
  };
  for (const auto& [key, value] :
       std::vector<std::pair<const char*, nlohmann::json>>{{"num_hidden_layers", 3000},
                                                           {"num_hidden_layers", 1000000000},
                                                           {"vocab_size", 1000000000000},
                                                           {"hidden_size", 1 << 30}}) {
    try {
      peft::models::load_pretrained(with(key, value));
      FAIL() << key << " = " << value.dump();
    } catch (const peft::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("parameters"), std::string::npos) << e.what();
    }
  }
  // Without a checkpoint, the machine's memory bounds from_config.
  auto c = config;
  c["vocab_size"] = 1000000000000;
  EXPECT_THROW(peft::models::from_config(c.dump()), peft::ConfigError);
  // The MLP counts too: a huge intermediate_size, or a huge number of experts.
  const auto refused_for_size = [](const nlohmann::json& bad) {
    try {
      peft::models::from_config(bad.dump());
    } catch (const peft::ConfigError& e) {
      return std::string(e.what()).find("parameters") != std::string::npos;
    }
    return false;
  };
  c = config;
  c["intermediate_size"] = 1000000000000;
  EXPECT_TRUE(refused_for_size(c));
  c = config;
  c["model_type"] = "mixtral";
  c["num_local_experts"] = 1000000000;
  EXPECT_TRUE(refused_for_size(c));
  EXPECT_GT(peft::models::config_parameters_lower_bound(config.dump()), 0.0);
  // A float where an integer belongs.
  c = config;
  c["hidden_size"] = 128.5;
  EXPECT_THROW(peft::models::from_config(c.dump()), peft::ConfigError);
}

}  // namespace
