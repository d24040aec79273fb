// kind "combine": adapters loaded from PEFT's files, combined with add_weighted_adapter for every
// listed combination; per new adapter and module the delta weight, lora_A / lora_B and the model
// output.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <functional>

#include "arch_model.h"
#include "case.h"
#include "peft/combine.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {

CaseResult run_combine_case(const Case& c) {
  const fs::path dir(c.dir);
  FreshModel m = fresh_model(c);
  std::shared_ptr<torch::nn::Module> root = m.root;
  const auto& forward = m.forward;
  torch::NoGradGuard no_grad;
  std::shared_ptr<PeftModel> pm;
  std::map<std::string, at::Tensor> produced;
  for (const auto& a : c.spec.at("adapters")) {
    const std::string name = a.get<std::string>();
    const std::string adir = (dir / ("adapter_" + name)).string();
    if (!pm) {
      pm = PeftModel::from_pretrained(root, adir, name);
    } else {
      pm->load_adapter(adir, name);
    }
  }
  auto record = [&](const std::string& adapter) {
    pm->set_adapter(adapter, /*inference_mode=*/true);
    produced[adapter + ".output"] = forward();
    for (auto& [lname, layer] : nn::lora_layers(*root)) {
      if (!layer->has_adapter(adapter)) continue;
      produced[adapter + "." + lname + ".delta_weight"] = layer->get_delta_weight(adapter);
      for (auto& [key, t] : layer->adapter_tensors(adapter)) {
        const std::string k = key == "lora_A.weight"   ? "lora_A"
                              : key == "lora_B.weight" ? "lora_B"
                                                       : key;
        produced[adapter + "." + lname + "." + k] = t.detach().clone();
      }
    }
  };
  for (const auto& a : c.spec.at("adapters")) record(a.get<std::string>());
  for (const auto& combo : c.spec.at("combinations")) {
    WeightedAdapterOptions o;
    o.combination_type = parse_combination_type(combo.value("combination_type", "svd"));
    if (combo.contains("svd_rank") && !combo["svd_rank"].is_null())
      o.svd_rank = combo["svd_rank"].get<int>();
    if (combo.contains("svd_clamp") && !combo["svd_clamp"].is_null())
      o.svd_clamp = combo["svd_clamp"].get<double>();
    if (combo.contains("svd_full_matrices"))
      o.svd_full_matrices = combo["svd_full_matrices"].get<bool>();
    if (combo.contains("density") && !combo["density"].is_null())
      o.density = combo["density"].get<double>();
    o.majority_sign_method =
        merge::parse_majority_sign(combo.value("majority_sign_method", "total"));
    std::vector<std::string> adapters;
    for (const auto& a : combo.value("adapters", c.spec.at("adapters")))
      adapters.push_back(a.get<std::string>());
    const auto weights = combo.at("weights").get<std::vector<double>>();
    const std::string name = combo.at("adapter_name").get<std::string>();
    if (combo.contains("seed_before_call"))
      torch::manual_seed(combo["seed_before_call"].get<uint64_t>());
    add_weighted_adapter(*pm, adapters, weights, name, o);
    record(name);
  }
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
