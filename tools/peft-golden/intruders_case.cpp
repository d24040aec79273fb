// kind "intruders": reduce_intruder_dimension on a saved adapter of a transformers checkpoint; the
// new adapter's dense updates, the logits with it active and PEFT's log lines.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>

#include "case.h"
#include "peft/error.h"
#include "peft/intruders.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft::golden {

CaseResult run_intruders_case(const Case& c) {
  const fs::path dir(c.dir);
  auto inputs =
      io::load_safetensors((dir / c.spec.value("inputs_file", "inputs.safetensors")).string());
  models::ForwardInput in;
  in.input_ids = inputs.at("input_ids");
  torch::NoGradGuard no_grad;
  auto model = models::load_pretrained((dir / "base").string());
  auto pm = PeftModel::from_pretrained(model, (dir / "adapter").string());
  std::map<std::string, at::Tensor> produced;
  produced["logits_adapter"] = model->forward(in);

  const auto& o = c.spec.at("intruder_options");
  IntruderOptions options;
  options.top_k = o.value("top_k", options.top_k);
  options.threshold_epsilon = o.value("threshold_epsilon", options.threshold_epsilon);
  options.mitigation_lambda = o.value("mitigation_lambda", options.mitigation_lambda);
  std::vector<std::string> lines;
  options.logging_sink = [&](const std::string& line) { lines.push_back(line); };
  reduce_intruder_dimension(*pm, options);
  for (auto& [lname, layer] : nn::lora_layers(*model)) {
    if (layer->has_adapter(options.new_adapter_name))
      produced["reduced." + lname + ".delta_weight"] =
          layer->get_delta_weight(options.new_adapter_name);
  }
  produced["logits_reduced"] = model->forward(in);

  const auto expected_lines = c.spec.value("log_lines", std::vector<std::string>{});
  if (!expected_lines.empty() && expected_lines != lines) {
    std::string got;
    for (const auto& l : lines) got += "\n  " + l;
    return fail("log lines differ from PEFT's; got:" + got);
  }
  return compare_tensors(c, [&](const std::string& n) {
    auto it = produced.find(n);
    return it == produced.end() ? at::Tensor() : it->second;
  });
}

}  // namespace peft::golden
