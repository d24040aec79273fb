// kind "variant": PEFT 0.20's later LoRA variants (BD-LoRA, MiCA, VeLoRA, MonteCLoRA) on a custom
// model, dispatching on case.json's "variant"; each follows the case's "protocol" list.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "arch_model.h"
#include "case.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/lora/variants/monteclora.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {
namespace {

using Produced = std::map<std::string, at::Tensor>;

LoraConfig case_config(const Case& c) {
  nlohmann::json j = c.spec.at("lora_config");
  j["peft_type"] = "LORA";
  return lora_config_from_json_text(j.dump(), c.id() + "/case.json");
}

// PEFT's names of the trainable parameters ("base_model.model." + name), sorted.
std::vector<std::string> trainable_names(torch::nn::Module& root) {
  std::vector<std::string> out;
  for (const auto& item : root.named_parameters()) {
    if (item.value().requires_grad()) out.push_back("base_model.model." + item.key());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The protocol's "re-save" step: save_pretrained must write exactly PEFT's keys, shapes and bytes.
std::string check_resave(const Case& c, const PeftModel& pm) {
  const fs::path tmp =
      fs::temp_directory_path() / ("peft-golden-variant-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  pm.save_pretrained(tmp.string());
  auto ours = io::load_safetensors((tmp / "adapter_model.safetensors").string());
  auto theirs =
      io::load_safetensors((fs::path(c.dir) / "adapter" / "adapter_model.safetensors").string());
  fs::remove_all(tmp);
  std::set<std::string> a, b;
  for (const auto& [k, v] : ours) a.insert(k);
  for (const auto& [k, v] : theirs) b.insert(k);
  if (a != b) {
    std::string msg = "re-saved keys differ from PEFT's:";
    for (const auto& k : a)
      if (!b.count(k)) msg += " +" + k;
    for (const auto& k : b)
      if (!a.count(k)) msg += " -" + k;
    return msg;
  }
  for (const auto& [k, v] : theirs) {
    const at::Tensor& o = ours.at(k);
    if (o.sizes() != v.sizes() || !at::equal(o, v)) return "re-saved tensor " + k + " differs";
  }
  return "";
}

// The protocol shared by the cases: PEFT's adapter loaded in eval mode, its output and dense
// deltas, the re-save, then merge_and_unload.
std::string loaded_adapter_steps(const Case& c, Produced& produced) {
  FreshModel m = fresh_model(c);
  auto pm = PeftModel::from_pretrained(m.root, (fs::path(c.dir) / "adapter").string());
  m.root->eval();
  torch::NoGradGuard no_grad;
  produced["output_adapter"] = m.forward();
  for (auto& [name, layer] : nn::lora_layers(*m.root)) {
    if (layer->has_adapter("default"))
      produced[name + ".delta_weight"] = layer->get_delta_weight("default");
  }
  const std::string resave = check_resave(c, *pm);
  if (!resave.empty()) return resave;
  pm->merge_and_unload();
  produced["output_merged"] = m.forward();
  for (auto& item : m.root->named_parameters())
    produced["merged." + item.key()] = item.value().clone();
  return "";
}

// MiCA's fresh-init checks: B's projector, A = 0, output = base, lora_B frozen.
std::string mica_init_steps(const Case& c, Produced& produced) {
  torch::manual_seed(c.spec.value("seed", 0));
  FreshModel m = fresh_model(c);
  auto pm = get_peft_model(m.root, case_config(c));
  const auto names = trainable_names(*m.root);
  const auto expected = c.spec.value("trainable_param_names", std::vector<std::string>{});
  if (names != expected) {
    std::string got;
    for (const auto& n : names) got += " " + n;
    return "trainable parameters after init:" + got;
  }
  const int64_t count = pm->get_nb_trainable_parameters().first;
  if (c.spec.contains("trainable_params") && count != c.spec["trainable_params"].get<int64_t>())
    return "trainable parameter count " + std::to_string(count) + ", PEFT " +
           c.spec["trainable_params"].dump();
  torch::NoGradGuard no_grad;
  for (auto& [name, layer] : nn::lora_layers(*m.root)) {
    if (!layer->has_adapter("default")) continue;
    const at::Tensor B = layer->adapter_tensor("default", "lora_B.weight").detach();
    produced["init." + name + ".B_projector"] = at::matmul(B, B.t());
    produced["init." + name + ".lora_A"] =
        layer->adapter_tensor("default", "lora_A.weight").detach();
  }
  produced["init.output"] = m.forward();
  return "";
}

// VeLoRA: two training passes (loss = sum(out * upstream)) with the gradients of the LoRA factors
// and the projection after each, then an eval forward.
std::string velora_training_steps(const Case& c, Produced& produced) {
  const fs::path dir(c.dir);
  auto arch = std::make_shared<ArchModel>(build_arch_model((dir / "base").string()));
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  auto pm = PeftModel::from_pretrained(arch->root, (dir / "adapter").string(), "default",
                                       /*is_trainable=*/true);
  arch->root->train();
  for (int k = 1; k <= 2; ++k) {
    const std::string pass = "pass" + std::to_string(k);
    for (auto& p : arch->root->parameters()) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
    const at::Tensor out = run_forward(*arch, inputs.at("x" + std::to_string(k)));
    (out * inputs.at("upstream" + std::to_string(k))).sum().backward();
    produced[pass + ".output"] = out.detach();
    for (auto& item : arch->root->named_parameters()) {
      if (item.value().requires_grad() && item.value().grad().defined())
        produced[pass + ".grad." + item.key()] = item.value().grad().clone();
    }
    for (auto& [name, layer] : nn::lora_layers(*arch->root)) {
      const at::Tensor e = layer->adapter_tensor("default", "lora_velora_embed");
      if (e.defined()) produced[pass + "." + name + ".velora_embed"] = e.detach().clone();
    }
  }
  arch->root->eval();
  torch::NoGradGuard no_grad;
  produced["eval.output"] = run_forward(*arch, inputs.at("x1"));
  return "";
}

// MonteCLoRA's regulariser right after loading, in training mode, before any forward.
std::string monteclora_loss_step(const Case& c, Produced& produced) {
  FreshModel m = fresh_model(c);
  auto pm = PeftModel::from_pretrained(m.root, (fs::path(c.dir) / "adapter").string());
  m.root->train();
  torch::NoGradGuard no_grad;
  const at::Tensor loss = nn::monteclora_loss(*m.root, pm->active_adapters());
  if (!loss.defined()) return "no MonteCLoRA sampler after loading the adapter";
  produced["train.monteclora_loss"] = loss.reshape({1});
  return "";
}

}  // namespace

CaseResult run_variant_case(const Case& c) {
  const std::string variant = c.spec.value("variant", "");
  Produced produced;
  std::string problem;
  if (variant == "bdlora") {
    problem = loaded_adapter_steps(c, produced);
  } else if (variant == "mica") {
    problem = mica_init_steps(c, produced);
    if (problem.empty()) problem = loaded_adapter_steps(c, produced);
  } else if (variant == "monteclora") {
    problem = monteclora_loss_step(c, produced);
    if (problem.empty()) problem = loaded_adapter_steps(c, produced);
  } else if (variant == "velora") {
    problem = velora_training_steps(c, produced);
  } else {
    return fail("variant \"" + variant + "\" is not run yet");
  }
  if (!problem.empty()) return fail(problem);
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
