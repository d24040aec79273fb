// kind "targeting": which modules get LoRA, with which r / lora_alpha / scaling, or which error
// PEFT raised.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "arch_model.h"
#include "case.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace peft::golden {
namespace {

// LoraConfig keyword arguments (as recorded in the case) -> LoraConfig, through the
// adapter_config.json parser.
LoraConfig config_from_kwargs(const json& kwargs) {
  json j = kwargs;
  j["peft_type"] = "LORA";
  return lora_config_from_json_text(j.dump(), "case lora_config");
}

// A fresh model for one config: a custom architecture.json model, or a transformers model from
// config.json (random weights: they play no role in targeting).
std::shared_ptr<torch::nn::Module> make_model(const fs::path& base_dir) {
  if (fs::exists(base_dir / "architecture.json")) return build_arch_model(base_dir.string()).root;
  return models::from_config(io::read_config_json(base_dir.string()));
}

std::string check_one(const fs::path& base_dir, const std::string& name, const json& spec) {
  struct {
    std::shared_ptr<torch::nn::Module> root;
  } model{make_model(base_dir)};
  const std::string adapter = "default";
  std::shared_ptr<PeftModel> pm;
  try {
    ScopedWarningCapture quiet;
    LoraConfig config = config_from_kwargs(spec.at("lora_config"));
    pm = get_peft_model(model.root, config, adapter);
  } catch (const Error& e) {
    if (!spec.contains("error")) return name + ": unexpected error: " + e.what();
    const std::string want = spec["error"].at("message").get<std::string>();
    const std::string got = e.what();
    if (got.find(want) == std::string::npos)
      return name + ": error \"" + got + "\" does not contain \"" + want + "\"";
    return "";
  }
  if (spec.contains("error"))
    return name + ": expected error " + spec["error"].at("message").get<std::string>();

  std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layers;
  for (auto& [n, l] : nn::lora_layers(*model.root)) layers[n] = l;
  std::set<std::string> got;
  for (const auto& n : pm->targeted_module_names(adapter)) got.insert(n);
  std::set<std::string> want;
  for (const auto& [module, values] : spec.at("targeted").items()) {
    want.insert(module);
    if (!got.count(module)) return name + ": \"" + module + "\" not targeted";
    const auto& s = layers.at(module)->adapter_settings(adapter);
    const double scaling = layers.at(module)->scaling(adapter);
    if (s.r != values.at("r").get<int>()) {
      return name + ": \"" + module + "\" r " + std::to_string(s.r) + " vs " +
             values.at("r").dump();
    }
    if (std::abs(s.lora_alpha - values.at("lora_alpha").get<double>()) > 1e-9) {
      return name + ": \"" + module + "\" lora_alpha " + std::to_string(s.lora_alpha) + " vs " +
             values.at("lora_alpha").dump();
    }
    if (std::abs(scaling - values.at("scaling").get<double>()) > 1e-6) {
      return name + ": \"" + module + "\" scaling " + std::to_string(scaling) + " vs " +
             values.at("scaling").dump();
    }
  }
  for (const auto& n : got) {
    if (!want.count(n)) return name + ": \"" + n + "\" targeted but PEFT did not";
  }
  if (spec.contains("modules_to_save_wrapped")) {
    auto wrapped = pm->modules_to_save_names(adapter);
    std::set<std::string> w(wrapped.begin(), wrapped.end());
    std::set<std::string> e;
    for (const auto& n : spec["modules_to_save_wrapped"]) e.insert(n.get<std::string>());
    if (w != e) return name + ": modules_to_save copies differ";
  }
  return "";
}

}  // namespace

CaseResult run_targeting_case(const Case& c) {
  const fs::path base = fs::path(c.dir) / "base";
  if (!fs::exists(base / "architecture.json") && !fs::exists(base / "config.json")) {
    return fail("base/ has neither architecture.json nor config.json");
  }
  std::ifstream f(fs::path(c.dir) / c.spec.value("expected_file", "expected.json"));
  if (!f.good()) return fail("cannot open expected.json");
  json expected = json::parse(f);
  for (const auto& [name, spec] : expected.at("configs").items()) {
    const auto& kw = spec.at("lora_config");
    if (kw.contains("target_parameters") && !kw["target_parameters"].is_null()) {
      return skip("config \"" + name + "\" uses target_parameters: the MoE issue");
    }
  }
  if (fs::exists(base / "architecture.json")) {
    std::ifstream a(base / "architecture.json");
    if (json::parse(a).dump().find("\"ParamHolder\"") != std::string::npos) {
      return skip("parameter-holding modules (target_parameters): the MoE issue");
    }
  }
  int checked = 0;
  for (const auto& [name, spec] : expected.at("configs").items()) {
    std::string problem = check_one(base, name, spec);
    if (!problem.empty()) return fail(problem);
    ++checked;
  }
  if (checked == 0) return fail("no configs in expected.json");
  return {};
}

}  // namespace peft::golden
