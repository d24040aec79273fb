// peft inspect --model DIR [--config lora.json | --adapter DIR] [--kappa TOP_P] [--json]:
// architecture summary, the modules a LoRA config targets (r, alpha, scaling), PEFT's
// trainable-parameters line and KappaTune targets.
#include <torch/nn/module.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "peft/kappa.h"
#include "peft/lora/layer.h"

namespace peft::cli {
namespace {

struct InspectOptions {
  ModelOptions model;
  std::string config_path;
  std::string adapter_dir;
  bool json = false;
  bool kappa = false;  // --kappa given
  double kappa_top_p = 0.2;
};

// KappaTune on the base weights (find_kappa_target_modules): every candidate with its kappa, the
// selection and a LoraConfig snippet holding it.
nlohmann::ordered_json kappa_report(torch::nn::Module& model, double top_p, bool show_progress) {
  const KappaTuneSelector selector(model, KappaOptions{.show_progress = show_progress});
  nlohmann::ordered_json candidates = nlohmann::ordered_json::array();
  for (const auto& s : selector.scores()) {
    candidates.push_back({{"name", s.name}, {"kappa", s.kappa}, {"is_parameter", s.is_parameter}});
  }
  const auto modules = selector.get_best_targets(top_p);
  const auto params = selector.get_best_target_parameters(top_p);
  nlohmann::ordered_json snippet;
  snippet["target_modules"] = modules;
  if (!params.empty()) snippet["target_parameters"] = params;
  nlohmann::ordered_json k;
  k["top_p"] = top_p;
  k["candidates"] = candidates;
  k["target_modules"] = modules;
  k["target_parameters"] =
      params.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(params);
  k["lora_config"] = snippet;
  return k;
}

void print_kappa(const nlohmann::ordered_json& k) {
  size_t n_modules = 0, n_params = 0;
  std::map<std::string, double> kappa;
  for (const auto& c : k["candidates"]) {
    (c["is_parameter"].get<bool>() ? n_params : n_modules) += 1;
    kappa[c["name"].get<std::string>()] = c["kappa"].get<double>();
  }
  const auto list = [&](const nlohmann::ordered_json& names) {
    for (const auto& name : names) {
      char line[512];
      std::snprintf(line, sizeof(line), "  %-48s kappa=%g\n", name.get<std::string>().c_str(),
                    kappa.at(name.get<std::string>()));
      std::cout << line;
    }
  };
  std::cout << "KappaTune (top_p=" << k["top_p"].get<double>()
            << "), lowest condition number first:\n"
            << "target_modules: " << k["target_modules"].size() << " of " << n_modules
            << " Linear module(s)\n";
  list(k["target_modules"]);
  if (k["target_parameters"].is_null()) {
    std::cout << "target_parameters: none (" << n_params << " 3-D MoE parameter(s) analyzed)\n";
  } else {
    std::cout << "target_parameters: " << k["target_parameters"].size() << " of " << n_params
              << " 3-D MoE parameter(s)\n";
    list(k["target_parameters"]);
  }
  std::cout << "LoraConfig snippet:\n" << k["lora_config"].dump(2) << "\n";
}

// A lora.json may be a full adapter_config.json or just the LoraConfig fields (peft_type optional).
LoraConfig read_config(const std::string& path) {
  nlohmann::ordered_json j = io::parse_ordered_json(io::read_file(path, "--config"), "--config",
                                                    "\"" + path + "\"", io::JsonRole::kConfig);
  PEFT_CHECK(j.is_object(), ConfigError, "--config",
             "\"" << path << "\" must hold a JSON object of LoraConfig fields");
  if (!j.contains("peft_type")) j["peft_type"] = "LORA";
  LoraConfig c = lora_config_from_json_text(j.dump(), path);
  c.validate();
  return c;
}

void run(const InspectOptions& o) {
  PEFT_CHECK(o.config_path.empty() || o.adapter_dir.empty(), ConfigError, "inspect",
             "pass --config or --adapter, not both");
  auto model = load_model(o.model);
  int64_t base_params = 0;
  for (const auto& p : model->parameters()) base_params += p.numel();
  // Before any adapter: KappaTune analyzes the base weights.
  nlohmann::ordered_json kappa;
  if (o.kappa) kappa = kappa_report(*model, o.kappa_top_p, /*show_progress=*/!o.json);
  std::shared_ptr<PeftModel> pm;
  if (!o.config_path.empty()) {
    pm = get_peft_model(model, read_config(o.config_path));
  } else if (!o.adapter_dir.empty()) {
    pm = PeftModel::from_pretrained(model, o.adapter_dir, "default", /*is_trainable=*/true);
  }
  nlohmann::ordered_json out;
  out["model_type"] = model->model_type();
  out["class_name"] = model->class_name();
  out["num_hidden_layers"] = model->num_hidden_layers();
  out["vocab_size"] = model->vocab_size();
  out["base_params"] = base_params;
  out["default_target_modules"] = model->default_target_modules();
  if (pm) {
    const std::string adapter = pm->active_adapter();
    std::map<std::string, std::shared_ptr<nn::LoraLayerImpl>> layers;
    for (auto& [name, layer] : nn::lora_layers(*model)) layers[name] = layer;
    nlohmann::ordered_json targeted = nlohmann::ordered_json::array();
    for (const auto& name : pm->targeted_module_names(adapter)) {
      const auto& s = layers.at(name)->adapter_settings(adapter);
      targeted.push_back({{"name", name},
                          {"type", nn::to_string(layers.at(name)->kind())},
                          {"r", s.r},
                          {"lora_alpha", s.lora_alpha},
                          {"scaling", layers.at(name)->scaling(adapter)}});
    }
    out["adapter"] = adapter;
    out["targeted_modules"] = targeted;
    out["modules_to_save"] = pm->modules_to_save_names(adapter);
    auto [trainable, all] = pm->get_nb_trainable_parameters();
    out["trainable_params"] = trainable;
    out["all_params"] = all;
    out["trainable_parameters_line"] = pm->trainable_parameters_line();
  }
  if (o.kappa) out["kappa"] = kappa;
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << "model: " << model->model_type() << " (" << model->class_name() << ") from "
            << o.model.model_dir << "\n"
            << "  layers: " << model->num_hidden_layers() << ", vocab: " << model->vocab_size()
            << ", parameters: " << base_params << ", dtype: " << o.model.dtype << "\n";
  std::cout << "  PEFT's default target_modules:";
  for (const auto& t : model->default_target_modules()) std::cout << " " << t;
  std::cout << "\n";
  if (o.kappa) print_kappa(kappa);
  if (!pm) return;
  std::cout << "adapter \"" << out["adapter"].get<std::string>()
            << "\": " << out["targeted_modules"].size() << " targeted module(s)\n";
  for (const auto& t : out["targeted_modules"]) {
    char line[512];
    std::snprintf(line, sizeof(line), "  %-48s %-9s r=%-4d alpha=%-8g scaling=%g\n",
                  t["name"].get<std::string>().c_str(), t["type"].get<std::string>().c_str(),
                  t["r"].get<int>(), t["lora_alpha"].get<double>(), t["scaling"].get<double>());
    std::cout << line;
  }
  for (const auto& m : out["modules_to_save"])
    std::cout << "  modules_to_save copy: " << m.get<std::string>() << "\n";
  std::cout << out["trainable_parameters_line"].get<std::string>() << "\n";
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* verb = app.add_subcommand(
      "inspect", "architecture summary, targeted modules and trainable parameters");
  add_model_options(verb, o->model);
  verb->add_option("--config", o->config_path, "a LoraConfig as JSON (adapter_config.json keys)");
  verb->add_option("--adapter", o->adapter_dir, "a PEFT adapter folder");
  verb->add_flag("--json", o->json, "machine-readable output");
  auto* kappa = verb->add_option(
      "--kappa", o->kappa_top_p,
      "KappaTune: select the lowest-condition-number fraction TOP_P of the Linear "
      "layers (and 3-D MoE parameters) as LoRA targets (PEFT find_kappa_target_modules)");
  kappa->type_name("TOP_P");
  verb->callback([o, kappa] {
    o->kappa = kappa->count() > 0;
    run(*o);
  });
}

}  // namespace peft::cli
