// The conformance runner must not depend on the public cases' module names or ranks: rewrite public
// cases with other names and a larger (zero-padded, same-scaling) rank and check they still pass;
// and check that a wrong adapter makes a case fail.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "arch_model.h"
#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
    s.replace(pos, from.size(), to);
  }
  return s;
}

std::string rename(std::string s, const std::map<std::string, std::string>& names) {
  for (const auto& [from, to] : names) s = replace_all(s, "\"" + from + "\"", "\"" + to + "\"");
  for (const auto& [from, to] : names) s = replace_all(s, "." + from + ".", "." + to + ".");
  for (const auto& [from, to] : names) s = replace_all(s, "\"" + from + ".", "\"" + to + ".");
  return s;
}

std::string rename_key(std::string key, const std::map<std::string, std::string>& names) {
  const std::string quoted = rename("\"" + key + "\"", names);
  return quoted.substr(1, quoted.size() - 2);
}

// Copies case `src` to `dst`, renaming modules everywhere and padding every LoRA rank by `extra`
// zero rows (A) / columns (B), with lora_alpha scaled so that alpha / r is unchanged.
void rewrite_case(const fs::path& src, const fs::path& dst,
                  const std::map<std::string, std::string>& names, int extra) {
  for (const auto& entry : fs::recursive_directory_iterator(src)) {
    const fs::path rel = fs::relative(entry.path(), src);
    const fs::path out = dst / rel;
    if (entry.is_directory()) {
      fs::create_directories(out);
      continue;
    }
    fs::create_directories(out.parent_path());
    const std::string ext = entry.path().extension().string();
    if (ext == ".json") {
      std::string text = rename(peft::test::read_file(entry.path().string()), names);
      if (entry.path().filename() == "adapter_config.json") {
        json cfg = json::parse(text);
        const int r = cfg["r"].get<int>();
        cfg["lora_alpha"] = cfg["lora_alpha"].get<double>() * (r + extra) / r;
        cfg["r"] = r + extra;
        text = cfg.dump(2);
      }
      peft::test::write_file(out.string(), text);
    } else if (ext == ".safetensors") {
      std::map<std::string, at::Tensor> tensors;
      for (auto& [k, v] : peft::io::load_safetensors(entry.path().string())) {
        at::Tensor t = v.clone();
        if (extra > 0 && entry.path().parent_path().filename() == "adapter") {
          const bool is_a = k.find("lora_A.weight") != std::string::npos ||
                            k.find("lora_embedding_A") != std::string::npos;
          const bool is_b = k.find("lora_B.weight") != std::string::npos ||
                            k.find("lora_embedding_B") != std::string::npos;
          if (is_a || is_b) {
            std::vector<int64_t> pad_shape = t.sizes().vec();
            pad_shape[is_a ? 0 : 1] = extra;
            t = torch::cat({t, torch::zeros(pad_shape, t.options())}, is_a ? 0 : 1);
          }
        }
        tensors[rename_key(k, names)] = t;
      }
      peft::io::save_safetensors(out.string(), tensors);
    } else {
      fs::copy_file(entry.path(), out);
    }
  }
}

peft::golden::Case load_case(const fs::path& dir) {
  peft::golden::Case c;
  c.dir = dir.string();
  std::ifstream f(dir / "case.json");
  c.spec = nlohmann::json::parse(f);
  return c;
}

struct Rewrite {
  std::string case_id;
  std::map<std::string, std::string> names;
};

class GoldenRunner : public ::testing::TestWithParam<Rewrite> {};

TEST_P(GoldenRunner, PassesWithOtherModuleNamesAndRanks) {
  peft::test::TempDir tmp;
  const fs::path src = peft::test::fixture("golden/" + GetParam().case_id);
  rewrite_case(src, tmp.path() / "case", GetParam().names, 3);
  auto c = load_case(tmp.path() / "case");
  const std::string text =
      peft::test::read_file((tmp.path() / "case" / "adapter" / "adapter_config.json").string());
  for (const auto& [from, to] : GetParam().names) {
    EXPECT_EQ(text.find("\"" + from + "\""), std::string::npos) << from << " was not renamed";
  }
  auto r = peft::golden::run_layer_case(c);
  EXPECT_EQ(r.status, peft::golden::CaseResult::Status::kPass) << r.reason;
  EXPECT_LT(r.max_abs_diff, 1e-5);
}

TEST_P(GoldenRunner, FailsWhenTheAdapterIsWrong) {
  peft::test::TempDir tmp;
  const fs::path src = peft::test::fixture("golden/" + GetParam().case_id);
  rewrite_case(src, tmp.path() / "case", {}, 0);
  // Scale every lora_B by 1.01: outputs move by about 1% of the LoRA contribution.
  const std::string weights =
      (tmp.path() / "case" / "adapter" / "adapter_model.safetensors").string();
  std::map<std::string, at::Tensor> tensors;
  for (auto& [k, v] : peft::io::load_safetensors(weights)) {
    const bool is_b =
        k.find("lora_B") != std::string::npos || k.find("lora_embedding_B") != std::string::npos;
    tensors[k] = is_b ? v * 1.01 : v.clone();
  }
  peft::io::save_safetensors(weights, tensors);
  auto r = peft::golden::run_layer_case(load_case(tmp.path() / "case"));
  EXPECT_EQ(r.status, peft::golden::CaseResult::Status::kFail);
}

INSTANTIATE_TEST_SUITE_P(
    RenamedCases, GoldenRunner,
    ::testing::Values(Rewrite{"layer-linear",
                              {{"lin0", "encoder.blocks.0.fc_in"}, {"lin1", "head.proj"}}},
                      Rewrite{"layer-gpt2conv1d-fan_in_fan_out",
                              {{"lin0", "h.0.mlp.c_fc"}, {"lin1", "h.0.mlp.c_proj"}}},
                      Rewrite{"layer-embedding", {{"emb", "wte"}, {"lin0", "lm.head"}}},
                      Rewrite{"layer-conv2d", {{"conv", "backbone.stem.conv"}}},
                      Rewrite{"layer-linear-lora_bias", {{"lin0", "a.b"}, {"lin1", "c.d.e"}}}),
    [](const auto& test_info) {
      std::string n = test_info.param.case_id;
      for (auto& ch : n) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return n;
    });

}  // namespace

namespace {

// Files written here are what PEFT writes: load each public layer case's PEFT adapter, save it
// again and compare with PEFT's own file (same keys, bit-identical tensors, same JSON but for
// peft_version).
class PeftFileRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftFileRoundTrip, ResavedAdapterEqualsPeftsFile) {
  const fs::path dir = peft::test::fixture("golden/" + GetParam());
  auto model = peft::golden::build_arch_model((dir / "base").string());
  peft::ScopedWarningCapture warnings;
  auto pm = peft::PeftModel::from_pretrained(model.root, (dir / "adapter").string());
  EXPECT_TRUE(warnings.messages().empty()) << warnings.messages().front();
  peft::test::TempDir tmp;
  pm->save_pretrained(tmp.str());

  peft::io::SafetensorsFile theirs((dir / "adapter" / "adapter_model.safetensors").string());
  peft::io::SafetensorsFile ours(tmp.str("adapter_model.safetensors"));
  auto their_keys = theirs.keys();
  auto our_keys = ours.keys();
  std::sort(their_keys.begin(), their_keys.end());
  std::sort(our_keys.begin(), our_keys.end());
  EXPECT_EQ(our_keys, their_keys);
  for (const auto& k : their_keys) {
    if (!ours.contains(k)) continue;
    EXPECT_EQ(ours.dtype(k), theirs.dtype(k)) << k;
    EXPECT_TRUE(torch::equal(ours.get(k), theirs.get(k))) << k;
  }
  EXPECT_EQ(ours.metadata(), theirs.metadata());

  auto their_cfg = nlohmann::json::parse(
      peft::test::read_file((dir / "adapter" / "adapter_config.json").string()));
  auto our_cfg = nlohmann::json::parse(peft::test::read_file(tmp.str("adapter_config.json")));
  their_cfg.erase("peft_version");
  our_cfg.erase("peft_version");
  // target_modules come from a Python set: order carries no meaning.
  for (auto* cfg : {&their_cfg, &our_cfg}) {
    if ((*cfg)["target_modules"].is_array()) {
      auto v = (*cfg)["target_modules"].get<std::vector<std::string>>();
      std::sort(v.begin(), v.end());
      (*cfg)["target_modules"] = v;
    }
  }
  EXPECT_EQ(our_cfg, their_cfg) << "ours:\n"
                                << our_cfg.dump(2) << "\ntheirs:\n"
                                << their_cfg.dump(2);
}

INSTANTIATE_TEST_SUITE_P(PublicLayerCases, PeftFileRoundTrip,
                         ::testing::Values("layer-linear", "layer-linear-bias-all",
                                           "layer-linear-lora_bias", "layer-linear-rslora",
                                           "layer-linear-bias-lora_only",
                                           "layer-gpt2conv1d-fan_in_fan_out", "layer-embedding",
                                           "layer-conv1d", "layer-conv2d", "layer-conv3d"),
                         [](const auto& test_info) {
                           std::string n = test_info.param;
                           for (auto& ch : n) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return n;
                         });

}  // namespace
