// peft merge --model DIR --adapter DIR --out DIR: a Hugging Face checkpoint folder with the adapter
// merged in (config, tokenizer files and generation config copied), loadable by --model here and by
// transformers.

#include <filesystem>
#include <iostream>

#include "common.h"
#include "peft/error.h"
#include "peft/io/output_path.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

struct MergeOptions {
  ModelOptions model;
  std::vector<std::string> adapters;
  std::string out_dir;
  bool safe_merge = false;
};

void run(const MergeOptions& o) {
  PEFT_CHECK(!o.adapters.empty(), ConfigError, "merge", "--adapter is required");
  std::vector<io::NamedPath> inputs = {{"--model", o.model.model_dir}};
  for (const auto& a : o.adapters) inputs.push_back({"--adapter", adapter_dir_of(a)});
  io::check_output_outside_inputs({"--out", o.out_dir}, inputs, "merge");
  auto model = load_model(o.model);
  auto pm = load_adapters(model, o.adapters);
  pm->merge_and_unload(o.safe_merge);
  save_model_folder(*model, o.model.model_dir, o.out_dir, "merge");
  std::cout << "merged " << o.adapters.size() << " adapter(s) into " << o.model.model_dir
            << "; wrote " << o.out_dir << "\n";
}

}  // namespace

void register_merge(CLI::App& app) {
  auto o = std::make_shared<MergeOptions>();
  auto* verb = app.add_subcommand(
      "merge", "write a checkpoint folder with the adapter merged into the weights");
  add_model_options(verb, o->model);
  verb->add_option("--adapter", o->adapters, "PEFT adapter folder (repeatable: merged together)")
      ->required();
  verb->add_option("--out", o->out_dir, "output model folder")->required();
  verb->add_flag("--safe-merge", o->safe_merge,
                 "check the merged weights for NaN / Inf before writing them");
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
