// peft inspect --model DIR [--config lora.json | --adapter DIR] [--json]: architecture summary, the modules a
// LoRA config targets (r, alpha, scaling) and PEFT's trainable-parameters line.
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft::cli {
namespace {

struct InspectOptions {
  ModelOptions model;
  std::string config_path;
  std::string adapter_dir;
  bool json = false;
};

// A lora.json may be a full adapter_config.json or just the LoraConfig fields (peft_type optional).
LoraConfig read_config(const std::string& path) {
  std::ifstream f(path);
  PEFT_CHECK(f.good(), ConfigError, "--config", "cannot read \"" << path << "\"");
  std::stringstream ss;
  ss << f.rdbuf();
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("--config", "\"" + path + "\" is not valid JSON: " + e.what());
  }
  PEFT_CHECK(j.is_object(), ConfigError, "--config", "\"" << path << "\" must hold a JSON object of LoraConfig fields");
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
  if (o.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::cout << "model: " << model->model_type() << " (" << model->class_name() << ") from " << o.model.model_dir << "\n"
            << "  layers: " << model->num_hidden_layers() << ", vocab: " << model->vocab_size()
            << ", parameters: " << base_params << ", dtype: " << o.model.dtype << "\n";
  std::cout << "  PEFT's default target_modules:";
  for (const auto& t : model->default_target_modules()) std::cout << " " << t;
  std::cout << "\n";
  if (!pm) return;
  std::cout << "adapter \"" << out["adapter"].get<std::string>() << "\": " << out["targeted_modules"].size()
            << " targeted module(s)\n";
  for (const auto& t : out["targeted_modules"]) {
    char line[512];
    std::snprintf(line, sizeof(line), "  %-48s %-9s r=%-4d alpha=%-8g scaling=%g\n", t["name"].get<std::string>().c_str(),
                  t["type"].get<std::string>().c_str(), t["r"].get<int>(), t["lora_alpha"].get<double>(),
                  t["scaling"].get<double>());
    std::cout << line;
  }
  for (const auto& m : out["modules_to_save"]) std::cout << "  modules_to_save copy: " << m.get<std::string>() << "\n";
  std::cout << out["trainable_parameters_line"].get<std::string>() << "\n";
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* verb = app.add_subcommand("inspect", "architecture summary, targeted modules and trainable parameters");
  add_model_options(verb, o->model);
  verb->add_option("--config", o->config_path, "a LoraConfig as JSON (adapter_config.json keys)");
  verb->add_option("--adapter", o->adapter_dir, "a PEFT adapter folder");
  verb->add_flag("--json", o->json, "machine-readable output");
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
