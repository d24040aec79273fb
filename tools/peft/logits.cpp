// peft logits --model DIR [--adapter [NAME=]DIR]... [--merge | --row-adapters FILE] --input-ids
// FILE --out FILE: runs the model on input_ids (and attention_mask) read from a safetensors file
// and writes float32 `logits`.
// --row-adapters names the adapter of each batch row, one per line ("__base__": the base model): a
// mixed batch.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cctype>
#include <iostream>
#include <optional>
#include <sstream>

#include "common.h"
#include "peft/error.h"
#include "peft/io/output_path.h"
#include "peft/io/read_file.h"
#include "peft/io/safetensors.h"
#include "peft/lora/mixed_batch.h"

namespace peft::cli {
namespace {

struct LogitsOptions {
  ModelOptions model;
  std::vector<std::string> adapters;
  bool merge = false;
  std::string row_adapters_path;
  std::string input_path;
  std::string out_path;
};

// The non-empty lines of a text file (trailing whitespace removed).
std::vector<std::string> read_lines(const std::string& path) {
  std::istringstream f(io::read_file(path, "logits"));
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

void run(const LogitsOptions& o) {
  std::vector<io::NamedPath> in_paths = {{"--model", o.model.model_dir},
                                         {"--input-ids", o.input_path},
                                         {"--row-adapters", o.row_adapters_path}};
  for (const auto& a : o.adapters) in_paths.push_back({"--adapter", adapter_dir_of(a)});
  io::check_output_outside_inputs({"--out", o.out_path}, in_paths, "logits");
  auto model = load_model(o.model);
  auto pm = load_adapters(model, o.adapters);
  PEFT_CHECK(!o.merge || pm, ConfigError, "logits", "--merge needs at least one --adapter");
  if (o.merge) pm->merge_and_unload();
  auto inputs = io::load_safetensors(o.input_path);
  PEFT_CHECK(inputs.count("input_ids"), FormatError, "logits",
             "\"" << o.input_path << "\" has no tensor \"input_ids\" (hint: int64 (batch, seq))");
  models::ForwardInput in;
  const at::Tensor& ids = inputs.at("input_ids");
  PEFT_CHECK(at::isIntegralType(ids.scalar_type(), /*includeBool=*/false), FormatError, "logits",
             "\"" << o.input_path << "\": input_ids is " << ids.scalar_type()
                  << "; expected an integer tensor (hint: token ids are int64, not floats)");
  in.input_ids = ids.to(at::kLong);
  PEFT_CHECK(in.input_ids.dim() == 2, ShapeMismatchError, "logits",
             "input_ids has " << in.input_ids.dim() << " dimensions; expected 2 (batch, seq)");
  if (in.input_ids.numel() > 0) {
    const int64_t lo = in.input_ids.min().item<int64_t>();
    const int64_t hi = in.input_ids.max().item<int64_t>();
    PEFT_CHECK(lo >= 0 && hi < model->vocab_size(), FormatError, "logits",
               "\"" << o.input_path << "\": token id " << (lo < 0 ? lo : hi)
                    << " is outside the model's vocabulary [0, " << model->vocab_size()
                    << ") (hint: ids tokenized for another model?)");
  }
  if (inputs.count("attention_mask")) in.attention_mask = inputs.at("attention_mask").to(at::kLong);
  if (inputs.count("token_type_ids")) in.token_type_ids = inputs.at("token_type_ids").to(at::kLong);
  std::optional<nn::MixedBatchGuard> mixed;
  if (!o.row_adapters_path.empty()) {
    PEFT_CHECK(pm && !o.merge, ConfigError, "logits",
               "--row-adapters needs --adapter NAME=DIR and no --merge (a mixed batch runs "
               "unmerged adapters)");
    std::vector<std::string> names = read_lines(o.row_adapters_path);
    PEFT_CHECK(static_cast<int64_t>(names.size()) == in.input_ids.size(0), ShapeMismatchError,
               "logits",
               "\"" << o.row_adapters_path << "\" names " << names.size() << " adapters for "
                    << in.input_ids.size(0) << " rows of input_ids; expected one line per row");
    mixed.emplace(*model, std::move(names));
  }
  torch::NoGradGuard no_grad;
  at::Tensor logits = model->forward(in).to(at::kFloat);
  io::save_safetensors(o.out_path, std::map<std::string, at::Tensor>{{"logits", logits}});
  std::cout << "wrote logits " << logits.sizes() << " to " << o.out_path << "\n";
}

}  // namespace

void register_logits(CLI::App& app) {
  auto o = std::make_shared<LogitsOptions>();
  auto* verb = app.add_subcommand(
      "logits", "write the model's logits for input ids read from a safetensors file");
  add_model_options(verb, o->model);
  add_quantize_options(verb, o->model);
  verb->add_option("--adapter", o->adapters,
                   "[NAME=]DIR: a PEFT adapter folder (repeatable: all active, outputs summed, "
                   "unless --row-adapters)");
  verb->add_option(
      "--row-adapters", o->row_adapters_path,
      "text file naming the adapter of each input row, one per line (\"__base__\": no adapter)");
  verb->add_flag("--merge", o->merge,
                 "merge the adapters into the weights first (merge_and_unload)");
  verb->add_option("--input-ids", o->input_path,
                   "safetensors file with int64 input_ids (+ attention_mask)")
      ->required();
  verb->add_option("--out", o->out_path, "output safetensors file (float32 tensor \"logits\")")
      ->required();
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
