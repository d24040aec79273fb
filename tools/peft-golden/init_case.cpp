// kind "init": LoRA initialisations (PiSSA, OLoRA, orthogonal, gaussian, default) applied to fresh
// copies of a base model, compared through residual weights, sign-invariant deltas, outputs and
// statistics; and the PiSSA -> LoRA conversion case (adapter_initial / adapter_trained / converted
// adapter).
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "arch_model.h"
#include "case.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {
namespace {

LoraConfig config_with_init(const Case& c, const nlohmann::json& init) {
  nlohmann::json j = c.spec.at("lora_config");
  j["peft_type"] = "LORA";
  if (!init.is_null()) j["init_lora_weights"] = init;
  return lora_config_from_json_text(j.dump(), c.id() + "/case.json");
}

// The case's compare list restricted to entries whose tensor starts with `prefix`.
Case filtered(const Case& c, const std::string& prefix) {
  Case out = c;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& e : c.spec.at("compare")) {
    if (e.value("tensor", "").rfind(prefix, 0) == 0) list.push_back(e);
  }
  out.spec["compare"] = list;
  return out;
}

CaseResult merge_results(const CaseResult& a, const CaseResult& b) {
  if (a.status == CaseResult::Status::kFail) return a;
  if (b.status == CaseResult::Status::kFail) return b;
  CaseResult r = a;
  r.max_abs_diff = std::max(a.max_abs_diff, b.max_abs_diff);
  return r;
}

CaseResult run_init_list(const Case& c) {
  CaseResult total;
  for (const auto& init_name : c.spec.at("inits")) {
    const std::string name = init_name.get<std::string>();
    const nlohmann::json init = name == "True"    ? nlohmann::json(true)
                                : name == "False" ? nlohmann::json(false)
                                                  : nlohmann::json(name);
    const std::string prefix = name == "True" ? "true" : name == "False" ? "false" : name;
    torch::manual_seed(c.spec.value("seed", 0));
    FreshModel m = fresh_model(c);
    auto pm = get_peft_model(m.root, config_with_init(c, init));
    torch::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> produced;
    produced[prefix + ".output"] = m.forward();
    for (auto& [lname, layer] : nn::lora_layers(*m.root)) {
      if (!layer->has_adapter("default")) continue;
      produced[prefix + "." + lname + ".base_weight_residual"] = layer->weight().clone();
      produced[prefix + "." + lname + ".delta_weight"] = layer->get_delta_weight("default");
      at::Tensor A, B;
      for (auto& [suffix, t] : layer->adapter_tensors("default")) {
        if (suffix == "lora_A.weight") A = t.detach();
        if (suffix == "lora_B.weight") B = t.detach();
      }
      produced[lname + ".lora_A"] = A;
      produced[lname + ".lora_B"] = B;
      produced[lname + ".lora_B@lora_A"] = at::matmul(B, A);
    }
    CaseResult r = compare_tensors(filtered(c, prefix + "."), [&](const std::string& n) {
      auto it = produced.find(n);
      return it == produced.end() ? at::Tensor() : it->second;
    });
    if (r.status == CaseResult::Status::kFail) r.reason = "init " + name + ": " + r.reason;
    total = merge_results(total, r);
  }
  return total;
}

// PiSSA -> LoRA: the residual base with the trained adapter, then the converted adapter on the
// original base.
CaseResult run_conversion(const Case& c) {
  const fs::path dir(c.dir);
  std::map<std::string, at::Tensor> produced;
  torch::NoGradGuard no_grad;
  {
    FreshModel m = fresh_model(c);
    auto pm =
        get_peft_model(m.root, config_with_init(c, nlohmann::json()));  // the case's PiSSA config
    // The trained adapter's weights onto the residual base (the residual is what get_peft_model
    // produced).
    auto trained =
        io::load_safetensors((dir / "adapter_trained" / "adapter_model.safetensors").string());
    pm->set_peft_model_state_dict(trained, "default");
    produced["output_trained"] = m.forward();
    // Save converted (the initial folder is copied: the conversion rewrites its config as PEFT
    // does).
    const fs::path tmp =
        fs::temp_directory_path() / ("peft-golden-conv-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    fs::copy(dir / "adapter_initial", tmp / "initial", fs::copy_options::recursive);
    pm->save_pretrained((tmp / "converted").string(), std::nullopt, (tmp / "initial").string());
    FreshModel orig = fresh_model(c);
    auto conv = PeftModel::from_pretrained(orig.root, (tmp / "converted").string());
    produced["output_converted_on_original_base"] = orig.forward();
    for (auto& [lname, layer] : nn::lora_layers(*orig.root)) {
      if (layer->has_adapter("default"))
        produced["converted." + lname + ".delta_weight"] = layer->get_delta_weight("default");
    }
    fs::remove_all(tmp);
  }
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace

CaseResult run_init_case(const Case& c) {
  if (c.spec.contains("inits")) return run_init_list(c);
  if (fs::exists(fs::path(c.dir) / "adapter_initial")) return run_conversion(c);
  return fail("init case with neither \"inits\" nor adapter_initial/");
}

}  // namespace peft::golden
