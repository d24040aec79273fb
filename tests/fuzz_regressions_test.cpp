// Every input the fuzz targets (fuzz/) ever failed on is kept in fuzz/regressions/<target>/ and
// replayed here under the normal build: each must end in a typed error or a result, never a
// crash, a hang (the ctest timeout) or an untyped exception. A sample of real files (the seeds of
// the fuzz corpora) must pass through the same targets.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "../fuzz/fuzz_target.h"

namespace fs = std::filesystem;

namespace {

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The two-part input of split2: a little-endian 4-byte length, the first part, the second.
std::string two_parts(const std::string& first, const std::string& second) {
  std::string len(4, '\0');
  for (size_t i = 0; i < 4; ++i) len[i] = static_cast<char>((first.size() >> (8 * i)) & 0xff);
  return len + first + second;
}

void run(peft::fuzz::Target target, const std::string& bytes) {
  target(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

TEST(FuzzRegressions, EveryKeptInputEndsInATypedErrorOrAResult) {
  const fs::path root = fs::path(PEFT_SOURCE_DIR) / "fuzz" / "regressions";
  size_t replayed = 0;
  for (const auto& [name, target] : peft::fuzz::targets()) {
    if (!fs::exists(root / name)) continue;
    for (const auto& entry : fs::directory_iterator(root / name)) {
      SCOPED_TRACE(entry.path().string());
      EXPECT_NO_THROW(run(target, bytes_of(entry.path())));
      ++replayed;
    }
  }
  EXPECT_GE(replayed, 18u);
}

TEST(FuzzRegressions, RealFilesPassThroughTheTargets) {
  const fs::path fixtures(PEFT_FIXTURES_DIR);
  const fs::path demo = fs::path(PEFT_SOURCE_DIR) / "assets" / "demo";
  run(peft::fuzz::safetensors,
      bytes_of(fixtures / "golden" / "model-llama" / "adapter" / "adapter_model.safetensors"));
  run(peft::fuzz::lora_config,
      bytes_of(fixtures / "golden" / "model-llama" / "adapter" / "adapter_config.json"));
  run(peft::fuzz::train_jsonl, bytes_of(demo / "data" / "train.jsonl"));
  run(peft::fuzz::tokenizer_json,
      two_parts(bytes_of(demo / "model" / "tokenizer.json"), "The cow says moo."));
  run(peft::fuzz::chat_template, two_parts("{{ messages[0].content }}", ""));
  run(peft::fuzz::bnb_state, "\x0f\x0f" + bytes_of(fs::path(PEFT_SOURCE_DIR) / "fuzz" / "seeds" /
                                                   "bnb_state" / "nf4_16x16.safetensors"));
  run(peft::fuzz::gptq_state,
      std::string("\x01\x1f\x01\x0f\x3f") + bytes_of(fs::path(PEFT_SOURCE_DIR) / "fuzz" / "seeds" /
                                                     "gptq_state" / "gptq4_16x64_g32.safetensors"));
  run(peft::fuzz::sentencepiece,
      two_parts(bytes_of(fixtures / "tokenizers" / "llama2_sp" / "tokenizer.model"), "Hello"));
  run(peft::fuzz::model_config, bytes_of(demo / "model" / "config.json"));
  run(peft::fuzz::model_config,
      bytes_of(fixtures / "golden" / "model-llama" / "base" / "config.json"));
}

}  // namespace
