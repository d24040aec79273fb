// End-to-end tests of the `peft` command on the golden tiny Llama (a transformers checkpoint + PEFT
// adapter).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/quant/quantized_weight.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::compare;

namespace {

using peft::test::peft_cli;

using peft::test::q;

class PeftCli : public ::testing::Test {
 protected:
  fs::path case_dir = peft::test::fixture("golden/model-llama");
  fs::path base = case_dir / "base";
  fs::path adapter = case_dir / "adapter";
  fs::path inputs = case_dir / "inputs.safetensors";
  peft::test::TempDir tmp;

  torch::Tensor expected(const std::string& name) {
    return peft::io::SafetensorsFile((case_dir / "expected.safetensors").string()).get(name);
  }
  torch::Tensor logits(const fs::path& file) {
    return peft::io::SafetensorsFile(file.string()).get("logits");
  }
};

TEST_F(PeftCli, HelpListsEveryVerb) {
  auto r = peft_cli("--help");
  EXPECT_EQ(r.code, 0) << r.output;
  for (const char* verb : {"inspect", "logits", "merge", "generate", "train"})
    EXPECT_NE(r.output.find(verb), std::string::npos);
  auto v = peft_cli("logits --help");
  EXPECT_EQ(v.code, 0);
  EXPECT_NE(v.output.find("--input-ids"), std::string::npos);
}

TEST_F(PeftCli, InspectShowsTargetsAndPeftsParameterLine) {
  auto r = peft_cli("inspect --model " + q(base) + " --adapter " + q(adapter));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("model.layers.1.self_attn.v_proj"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("trainable params: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" || all params: "), std::string::npos) << r.output;

  peft::test::write_file(tmp.str("lora.json"),
                         R"({"r": 8, "lora_alpha": 16, "target_modules": "all-linear"})");
  auto j =
      peft_cli("inspect --json --model " + q(base) + " --config " + q(tmp.path() / "lora.json"));
  ASSERT_EQ(j.code, 0) << j.output;
  auto out = nlohmann::json::parse(j.output);
  EXPECT_EQ(out["model_type"], "llama");
  EXPECT_EQ(out["targeted_modules"].size(),
            14u);  // 2 layers x 7 linears; lm_head excluded as PEFT does
  EXPECT_EQ(out["targeted_modules"][0]["scaling"].get<double>(), 2.0);
}

TEST_F(PeftCli, LogitsMatchPeftWithAndWithoutMerging) {
  auto r = peft_cli("logits --model " + q(base) + " --adapter " + q(adapter) + " --input-ids " +
                    q(inputs) + " --out " + q(tmp.path() / "a.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(compare(logits(tmp.path() / "a.safetensors"), expected("logits_adapter"), 1e-4, 1e-4),
            "");
  auto m = peft_cli("logits --merge --model " + q(base) + " --adapter " + q(adapter) +
                    " --input-ids " + q(inputs) + " --out " + q(tmp.path() / "m.safetensors"));
  ASSERT_EQ(m.code, 0) << m.output;
  EXPECT_EQ(compare(logits(tmp.path() / "m.safetensors"), logits(tmp.path() / "a.safetensors"),
                    1e-4, 1e-4),
            "");
  auto b = peft_cli("logits --model " + q(base) + " --input-ids " + q(inputs) + " --out " +
                    q(tmp.path() / "b.safetensors"));
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_EQ(compare(logits(tmp.path() / "b.safetensors"), expected("logits_base"), 1e-4, 1e-4), "");
}

TEST_F(PeftCli, QuantizeGivesTheQuantizedModelsLogits) {
  // --quantize nf4 --double-quant: the in-process quantized model's logits, with the adapter on
  // top.
  auto r = peft_cli("logits --quantize nf4 --double-quant --model " + q(base) + " --adapter " +
                    q(adapter) + " --input-ids " + q(inputs) + " --out " +
                    q(tmp.path() / "q.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  peft::models::LoadOptions lo;
  peft::quant::QuantizeOptions qo;
  qo.double_quant = true;
  lo.quantize = qo;
  auto model = peft::models::load_pretrained(base.string(), lo);
  auto pm = peft::PeftModel::from_pretrained(model, adapter.string());
  auto ids = peft::io::load_safetensors(inputs.string()).at("input_ids");
  torch::NoGradGuard no_grad;
  const at::Tensor expect = model->forward({ids, {}, {}, nullptr});
  const at::Tensor got = logits(tmp.path() / "q.safetensors");
  EXPECT_EQ(compare(got, expect, 1e-5, 1e-5), "");
  EXPECT_GT((got - expected("logits_adapter")).abs().max().item<double>(),
            1e-4);  // it was quantized
  // Bad combinations are usage errors.
  auto bad = peft_cli("logits --double-quant --model " + q(base) + " --input-ids " + q(inputs) +
                      " --out " + q(tmp.path() / "x.safetensors"));
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--double-quant"), std::string::npos) << bad.output;
  auto wrong = peft_cli("logits --quantize nf3 --model " + q(base) + " --input-ids " + q(inputs) +
                        " --out " + q(tmp.path() / "x.safetensors"));
  EXPECT_EQ(wrong.code, 2) << wrong.output;
  EXPECT_NE(wrong.output.find("nf4"), std::string::npos) << wrong.output;
}

TEST_F(PeftCli, InitLoftQShowsTheErrorAndWritesTheQuantizedBase) {
  peft::test::write_file(
      tmp.str("loftq.json"),
      R"({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
                             "init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 2}})");
  auto r = peft_cli("init --model " + q(base) + " --config " + q(tmp.path() / "loftq.json") +
                    " --out " + q(tmp.path() / "loftq"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.find("||W - Q||_F: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const double before = std::stod(r.output.substr(at + 13));
  const double after = std::stod(r.output.substr(r.output.find("||W - (Q + s B A)||_F: ") + 23));
  EXPECT_LT(after, before * 0.95) << r.output;
  EXPECT_TRUE(fs::exists(tmp.path() / "loftq" / "residual_model" / "model.safetensors"));
}

TEST_F(PeftCli, MergeWritesACheckpointWhoseLogitsEqualTheUnmergedOnes) {
  const fs::path out = tmp.path() / "merged";
  auto r = peft_cli("merge --model " + q(base) + " --adapter " + q(adapter) + " --out " + q(out));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_TRUE(fs::exists(out / "generation_config.json"));
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  auto l = peft_cli("logits --model " + q(out) + " --input-ids " + q(inputs) + " --out " +
                    q(tmp.path() / "l.safetensors"));
  ASSERT_EQ(l.code, 0) << l.output;
  EXPECT_EQ(compare(logits(tmp.path() / "l.safetensors"), expected("logits_adapter"), 1e-4, 1e-4),
            "");
  // The merged checkpoint has no LoRA keys, only the base names.
  peft::io::SafetensorsFile f((out / "model.safetensors").string());
  for (const auto& k : f.keys()) EXPECT_EQ(k.find("lora"), std::string::npos) << k;
}

TEST_F(PeftCli, GenerateStreamsAContinuation) {
  // The golden model has no tokenizer: give it a byte-level one over its 256-token vocabulary.
  const fs::path model = tmp.path() / "model";
  fs::create_directories(model);
  for (const auto& e : fs::directory_iterator(base))
    fs::copy_file(e.path(), model / e.path().filename());
  peft::test::write_file((model / "tokenizer.json").string(),
                         peft::test::byte_level_tokenizer().dump());
  auto r = peft_cli("generate --model " + q(model) + " --adapter " + q(adapter) +
                    " --prompt 'Hello' --max-new-tokens 8 --stop-token 255");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("Hello", 0), 0u) << r.output;
  // Greedy decoding is deterministic.
  auto again = peft_cli("generate --model " + q(model) + " --adapter " + q(adapter) +
                        " --prompt 'Hello' --max-new-tokens 8 --stop-token 255");
  EXPECT_EQ(again.output, r.output);
  // An out-of-vocabulary stop token is a configuration error (exit 2) reported before any output.
  auto bad = peft_cli("generate --model " + q(model) + " --prompt 'Hello' --stop-token 300");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_EQ(bad.output.rfind("error: ", 0), 0u) << bad.output;
}

TEST_F(PeftCli, BadInputGivesOneErrorLineAndExitCode) {
  auto missing = peft_cli("inspect --model " + q(tmp.path() / "nope"));
  EXPECT_EQ(missing.code, 1) << missing.output;
  EXPECT_EQ(missing.output.rfind("error: ", 0), 0u) << missing.output;
  EXPECT_NE(missing.output.find("nope"), std::string::npos);

  const fs::path unknown = tmp.path() / "unknown";
  fs::create_directories(unknown);
  peft::test::write_file((unknown / "config.json").string(), R"({"model_type": "t5"})");
  auto arch = peft_cli("inspect --model " + q(unknown));
  EXPECT_EQ(arch.code, 2) << arch.output;  // a configuration error
  EXPECT_NE(arch.output.find("\"t5\" is not supported"), std::string::npos) << arch.output;
  EXPECT_NE(arch.output.find("llama"), std::string::npos)
      << arch.output;  // lists the supported ones

  // An adapter trained for another model (BERT's query/value on Llama).
  auto other = peft_cli("logits --model " + q(base) + " --adapter " +
                        q(peft::test::fixture("golden/model-bert-seqcls/adapter")) +
                        " --input-ids " + q(inputs) + " --out " + q(tmp.path() / "x.safetensors"));
  EXPECT_EQ(other.code, 1) << other.output;
  EXPECT_NE(other.output.find("not found in the base model"), std::string::npos) << other.output;

  auto usage = peft_cli("logits --input-ids x --out y");
  EXPECT_EQ(usage.code, 2) << usage.output;
  EXPECT_EQ(usage.output.rfind("error: ", 0), 0u) << usage.output;
  auto dtype = peft_cli("inspect --model " + q(base) + " --dtype int3");
  EXPECT_EQ(dtype.code, 2) << dtype.output;
}

}  // namespace
