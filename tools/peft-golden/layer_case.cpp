// kind "layer": a custom model, PEFT's adapter file, outputs with / without / merged, delta and
// merged weights.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <set>

#include "arch_model.h"
#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {

namespace {

// Every tensor name the case's compare list asks for.
std::set<std::string> wanted_names(const Case& c) {
  std::set<std::string> out;
  for (const auto& e : c.spec.at("compare")) {
    for (const char* key : {"tensor", "of", "applies_to"}) {
      if (e.contains(key) && e[key].is_string()) out.insert(e[key].get<std::string>());
    }
  }
  return out;
}

}  // namespace

CaseResult run_layer_case(const Case& c) {
  const fs::path base = fs::path(c.dir) / "base";
  if (!fs::exists(base / "architecture.json"))
    return skip("transformers base model: needs the model zoo");
  torch::NoGradGuard no_grad;
  ArchModel model = build_arch_model(base.string());
  auto inputs = io::load_safetensors(
      (fs::path(c.dir) / c.spec.value("inputs_file", "inputs.safetensors")).string());
  PEFT_CHECK(
      inputs.count(model.input_name), FormatError, "peft-golden",
      "inputs file has no tensor \"" << model.input_name << "\" (architecture.json's input)");
  at::Tensor x = inputs.at(model.input_name);
  const auto wanted = wanted_names(c);
  bool wants_merge = false;
  for (const auto& n : wanted)
    wants_merge = wants_merge || n == "output_merged" || n.rfind("merged.", 0) == 0;

  std::map<std::string, at::Tensor> produced;
  model.root->eval();
  produced["output_base"] = run_forward(model, x);

  const std::string adapter = "default";
  auto pm = PeftModel::from_pretrained(model.root, (fs::path(c.dir) / "adapter").string(), adapter);
  produced["output_adapter"] = run_forward(model, x);
  if (wanted.count("output_disabled")) {
    auto guard = pm->disable_adapter();
    produced["output_disabled"] = run_forward(model, x);
  }
  for (auto& [name, layer] : nn::lora_layers(*model.root)) {
    if (!layer->has_adapter(adapter)) continue;
    produced[name + ".delta_weight"] = layer->get_delta_weight(adapter);
    for (auto& [suffix, t] : layer->adapter_tensors(adapter))
      produced[name + "." + suffix] = t.detach().clone();
  }
  if (wants_merge) {
    pm->merge_and_unload();
    produced["output_merged"] = run_forward(model, x);
    for (auto& item : model.root->named_parameters())
      produced["merged." + item.key()] = item.value().clone();
  }
  return compare_tensors(c, [&](const std::string& name) {
    auto it = produced.find(name);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
