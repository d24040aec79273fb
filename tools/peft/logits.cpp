// peft logits --model DIR [--adapter DIR]... [--merge] --input-ids FILE --out FILE: runs the model on
// input_ids (and attention_mask) read from a safetensors file and writes float32 `logits`.
#include <torch/torch.h>

#include <iostream>

#include "common.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"

namespace peft::cli {
namespace {

struct LogitsOptions {
  ModelOptions model;
  std::vector<std::string> adapters;
  bool merge = false;
  std::string input_path;
  std::string out_path;
};

void run(const LogitsOptions& o) {
  auto model = load_model(o.model);
  auto pm = load_adapters(model, o.adapters);
  PEFT_CHECK(!o.merge || pm, ConfigError, "logits", "--merge needs at least one --adapter");
  if (o.merge) pm->merge_and_unload();
  auto inputs = io::load_safetensors(o.input_path);
  PEFT_CHECK(inputs.count("input_ids"), FormatError, "logits",
             "\"" << o.input_path << "\" has no tensor \"input_ids\" (hint: int64 (batch, seq))");
  models::ForwardInput in;
  in.input_ids = inputs.at("input_ids").to(at::kLong);
  PEFT_CHECK(in.input_ids.dim() == 2, ShapeMismatchError, "logits",
             "input_ids has " << in.input_ids.dim() << " dimensions; expected 2 (batch, seq)");
  if (inputs.count("attention_mask")) in.attention_mask = inputs.at("attention_mask").to(at::kLong);
  if (inputs.count("token_type_ids")) in.token_type_ids = inputs.at("token_type_ids").to(at::kLong);
  torch::NoGradGuard no_grad;
  at::Tensor logits = model->forward(in).to(at::kFloat);
  io::save_safetensors(o.out_path, std::map<std::string, at::Tensor>{{"logits", logits}});
  std::cout << "wrote logits " << logits.sizes() << " to " << o.out_path << "\n";
}

}  // namespace

void register_logits(CLI::App& app) {
  auto o = std::make_shared<LogitsOptions>();
  auto* verb = app.add_subcommand("logits", "write the model's logits for input ids read from a safetensors file");
  add_model_options(verb, o->model);
  verb->add_option("--adapter", o->adapters, "PEFT adapter folder (repeatable: all active, outputs summed)");
  verb->add_flag("--merge", o->merge, "merge the adapters into the weights first (merge_and_unload)");
  verb->add_option("--input-ids", o->input_path, "safetensors file with int64 input_ids (+ attention_mask)")->required();
  verb->add_option("--out", o->out_path, "output safetensors file (float32 tensor \"logits\")")->required();
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
