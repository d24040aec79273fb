// A fresh base model of a golden case and its forward on the case's inputs (init and combine
// cases).
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <filesystem>

#include "arch_model.h"
#include "case.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/models/model.h"

namespace fs = std::filesystem;

namespace peft::golden {

FreshModel fresh_model(const Case& c) {
  const fs::path base = fs::path(c.dir) / "base";
  auto inputs = io::load_safetensors(
      (fs::path(c.dir) / c.spec.value("inputs_file", "inputs.safetensors")).string());
  FreshModel m;
  if (fs::exists(base / "architecture.json")) {
    auto arch = std::make_shared<ArchModel>(build_arch_model(base.string()));
    PEFT_CHECK(inputs.count(arch->input_name), FormatError, "peft-golden",
               "inputs file has no tensor \"" << arch->input_name << "\"");
    at::Tensor x = inputs.at(arch->input_name);
    m.root = arch->root;
    m.forward = [arch, x] { return run_forward(*arch, x); };
  } else {
    auto model = models::load_pretrained(base.string());
    models::ForwardInput in;
    in.input_ids = inputs.at("input_ids");
    if (inputs.count("attention_mask")) in.attention_mask = inputs.at("attention_mask");
    m.root = model;
    m.forward = [model, in] { return model->forward(in); };
  }
  m.root->eval();
  return m;
}

}  // namespace peft::golden
