// kind "arrow": create_arrow_model over the case's task (and general) adapters; the routed logits
// on two inputs (the second forward reuses the prototypes the first one built).
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "case.h"
#include "peft/arrow.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {

CaseResult run_arrow_case(const Case& c) {
  const fs::path dir(c.dir);
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  // The arrow_config object parsed by the adapter_config.json reader (its one JSON edge).
  nlohmann::json j = {{"peft_type", "LORA"}, {"arrow_config", c.spec.at("arrow_config")}};
  const ArrowConfig arrow =
      *lora_config_from_json_text(j.dump(), c.id() + "/case.json").arrow_config;
  std::vector<std::string> tasks, general;
  for (const auto& p : c.spec.at("task_adapters"))
    tasks.push_back((dir / p.get<std::string>()).string());
  for (const auto& p : c.spec.value("general_adapters", nlohmann::json::array()))
    general.push_back((dir / p.get<std::string>()).string());

  torch::NoGradGuard no_grad;
  auto model = models::load_pretrained((dir / "base").string());
  std::map<std::string, at::Tensor> produced;
  models::ForwardInput in, in2;
  in.input_ids = inputs.at("input_ids");
  produced["logits_base"] = model->forward(in);
  auto pm = create_arrow_model(model, tasks, arrow, general);
  model->eval();
  produced["logits_routed"] = model->forward(in);
  if (inputs.count("input_ids_2")) {
    in2.input_ids = inputs.at("input_ids_2");
    produced["logits_routed_2"] = model->forward(in2);
  }
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
