// kind "param": target_parameters (PEFT's ParamWrapper) on raw 2-D / 3-D parameters: PEFT's adapter
// file loads under its keys, delta weights, merged parameters, and the adapter saved again holds
// the same keys and values.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "arch_model.h"
#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/lora/param.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {

CaseResult run_param_case(const Case& c) {
  const fs::path base = fs::path(c.dir) / "base";
  torch::NoGradGuard no_grad;
  ArchModel model = build_arch_model(base.string());
  model.root->eval();
  const std::string adapter = "default";
  const fs::path adapter_dir = fs::path(c.dir) / "adapter";
  auto pm = PeftModel::from_pretrained(model.root, adapter_dir.string(), adapter);

  std::map<std::string, at::Tensor> produced;
  for (auto& item : model.root->named_modules("", /*include_self=*/false)) {
    if (auto owner = std::dynamic_pointer_cast<nn::ParamModuleImpl>(item.value())) {
      for (const auto& p : owner->targeted_parameters()) {
        produced[item.key() + "." + p + ".delta_weight"] =
            owner->param_lora(p)->get_delta_weight(adapter);
      }
    }
  }
  for (auto& [name, layer] : nn::lora_layers(*model.root)) {
    if (layer->kind() != nn::LayerKind::kParam && layer->has_adapter(adapter)) {
      produced[name + ".delta_weight"] = layer->get_delta_weight(adapter);
    }
  }

  // The adapter saved again: PEFT's keys, the loaded values bit for bit.
  const fs::path out =
      fs::temp_directory_path() / ("peft-golden-" + c.id() + "-" + std::to_string(::getpid()));
  pm->save_pretrained(out.string());
  auto saved = io::load_safetensors((out / "adapter_model.safetensors").string());
  auto original = io::load_safetensors((adapter_dir / "adapter_model.safetensors").string());
  fs::remove_all(out);
  std::set<std::string> saved_keys, original_keys;
  for (const auto& [k, v] : saved) saved_keys.insert(k);
  for (const auto& [k, v] : original) original_keys.insert(k);
  if (saved_keys != original_keys) {
    std::string msg = "saved adapter keys differ from PEFT's:";
    for (const auto& k : saved_keys) {
      if (!original_keys.count(k)) msg += " +" + k;
    }
    for (const auto& k : original_keys) {
      if (!saved_keys.count(k)) msg += " -" + k;
    }
    return fail(msg);
  }
  for (const auto& [k, v] : original) {
    if (!at::equal(saved.at(k), v))
      return fail("saved tensor " + k + " differs from the loaded one");
  }

  pm->merge_and_unload();
  for (auto& item : model.root->named_parameters())
    produced["merged." + item.key()] = item.value().clone();
  return compare_tensors(c, [&](const std::string& name) {
    auto it = produced.find(name);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
