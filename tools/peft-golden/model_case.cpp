// kind "model": a transformers checkpoint (base/config.json) with PEFT adapters: logits of the base
// model, with each adapter, after merge_and_unload (when the case compares merged results); and,
// when the case has an expected.json, the saved file layout.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <set>

#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {
namespace {

// A LoraConfig keyword that needs a feature of a later release: the case is skipped, naming it.
std::string later_feature(const nlohmann::json& kwargs) {
  for (const char* key : {"target_parameters", "arrow_config"}) {
    if (kwargs.contains(key) && !kwargs[key].is_null() && kwargs[key] != false) return key;
  }
  if (kwargs.contains("init_lora_weights") && kwargs["init_lora_weights"] == "loftq")
    return "init_lora_weights=loftq";
  return "";
}

// Folder holding adapter `name`'s files: adapter/ for "default", adapter_<name>/, or <any
// folder>/<name>/.
std::string find_adapter_dir(const fs::path& case_dir, const std::string& name) {
  if (name == "default" && fs::exists(case_dir / "adapter" / "adapter_config.json"))
    return (case_dir / "adapter").string();
  if (fs::exists(case_dir / ("adapter_" + name) / "adapter_config.json")) {
    return (case_dir / ("adapter_" + name)).string();
  }
  for (const auto& e : fs::directory_iterator(case_dir)) {
    if (e.is_directory() && fs::exists(e.path() / name / "adapter_config.json"))
      return (e.path() / name).string();
  }
  return "";
}

}  // namespace

CaseResult run_model_case(const Case& c) {
  const fs::path dir(c.dir);
  const fs::path base = dir / "base";
  if (!fs::exists(base / "config.json")) return fail("base/config.json missing");
  std::vector<std::pair<std::string, nlohmann::json>> adapters{
      {"default", c.spec.value("lora_config", nlohmann::json::object())}};
  for (const auto& [key, value] : c.spec.items()) {
    if (key.rfind("lora_config_", 0) == 0) adapters.emplace_back(key.substr(12), value);
  }
  for (const auto& [name, kwargs] : adapters) {
    const std::string f = later_feature(kwargs);
    if (!f.empty()) return skip("adapter \"" + name + "\" uses " + f + ": a later feature");
  }
  torch::NoGradGuard no_grad;
  auto model = models::load_pretrained(base.string());
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  models::ForwardInput in;
  PEFT_CHECK(inputs.count("input_ids"), FormatError, "peft-golden", "inputs have no input_ids");
  in.input_ids = inputs.at("input_ids");
  if (inputs.count("attention_mask")) in.attention_mask = inputs.at("attention_mask");
  if (inputs.count("token_type_ids")) in.token_type_ids = inputs.at("token_type_ids");

  std::map<std::string, at::Tensor> produced;
  produced["logits_base"] = model->forward(in);

  std::shared_ptr<PeftModel> pm;
  for (const auto& [name, kwargs] : adapters) {
    const std::string adir = find_adapter_dir(dir, name);
    if (adir.empty()) return fail("no adapter folder for adapter \"" + name + "\"");
    if (!pm) {
      pm = PeftModel::from_pretrained(model, adir, name);
    } else {
      pm->load_adapter(adir, name);
    }
  }
  for (const auto& [name, kwargs] : adapters) {
    pm->set_adapter(name, /*inference_mode=*/true);
    produced["logits_" + name] = model->forward(in);
  }
  // Loading further adapters leaves "default" active, so its logits are the adapter logits.
  produced["logits_adapter"] = produced.at("logits_default");
  pm->set_adapter("default", true);

  CaseResult files;
  if (c.spec.contains("expected_file")) {
    files = compare_saved_layout(c, *pm);
    if (files.status == CaseResult::Status::kFail) return files;
  }
  // Merge only when the case compares merged results: a layer_replication case lists none (PEFT
  // would add every copy's update to the one shared weight, which peft.cpp refuses).
  bool wants_merged = false;
  for (const auto& entry : c.spec.value("compare", nlohmann::json::array())) {
    const std::string t = entry.value("tensor", "");
    if (t == "logits_merged" || t.rfind("merged.", 0) == 0) wants_merged = true;
  }
  if (wants_merged) {
    pm->merge_and_unload();
    produced["logits_merged"] = model->forward(in);
    for (auto& item : model->named_parameters())
      produced["merged." + item.key()] = item.value().clone();
  }

  return compare_tensors(c, [&](const std::string& name) {
    auto it = produced.find(name);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
