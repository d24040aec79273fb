// peft combine --model DIR --adapter NAME=DIR ... --weights W1,W2,... --type TYPE --out DIR: one
// adapter combined from several (PEFT's add_weighted_adapter: cat, linear, TIES, DARE,
// magnitude_prune and their SVD variants), written as a PEFT adapter folder
// (OUT/adapter_config.json + OUT/adapter_model.safetensors).
#include "peft/combine.h"

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <set>

#include "common.h"
#include "peft/error.h"
#include "peft/io/adapter_io.h"
#include "peft/io/output_path.h"
#include "peft/io/staged_directory.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

struct CombineOptions {
  ModelOptions model;
  std::vector<std::string> adapters;  // NAME=DIR
  std::vector<double> weights;
  WeightedAdapterOptions combine;
  std::string type = "svd";             // parsed by parse_combination_type
  std::string majority_sign = "total";  // parsed by merge::parse_majority_sign
  double density = 0;                   // read when --density was given
  int svd_rank = 0;                     // read when --svd-rank was given
  double svd_clamp = 0;                 // read when --svd-clamp was given
  CLI::Option* density_opt = nullptr;
  CLI::Option* svd_rank_opt = nullptr;
  CLI::Option* svd_clamp_opt = nullptr;
  std::string out_dir;
};

struct NamedDir {
  std::string name, dir;
};

std::string join(const std::vector<std::string>& items, const std::string& sep = ", ") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += item;
  }
  return out;
}

// Checks every option before anything is loaded and throws one ConfigError listing each problem;
// fills the parsed enums into o.combine.
std::vector<NamedDir> validate(CombineOptions& o) {
  std::vector<std::string> problems;
  std::vector<NamedDir> named;
  std::set<std::string> seen;
  for (const auto& a : o.adapters) {
    const auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == a.size()) {
      problems.push_back("--adapter \"" + a + "\" is not NAME=DIR");
      continue;
    }
    NamedDir nd{a.substr(0, eq), a.substr(eq + 1)};
    if (!seen.insert(nd.name).second) {
      problems.push_back("adapter name \"" + nd.name + "\" is given twice");
    }
    named.push_back(nd);
  }
  if (o.weights.size() != o.adapters.size()) {
    problems.push_back(
        std::to_string(o.adapters.size()) + " adapters but " + std::to_string(o.weights.size()) +
        " weights (hint: --weights takes one number per --adapter, comma-separated)");
  }
  // The type is checked even for one adapter (which PEFT then combines as "linear").
  try {
    o.combine.combination_type = parse_combination_type(o.type);
    if (needs_density(o.combine.combination_type) && o.adapters.size() > 1 &&
        !o.density_opt->count()) {
      problems.push_back("--type " + o.type + " needs --density (the fraction of entries kept)");
    }
  } catch (const ConfigError& e) {
    problems.push_back("--type: " + std::string(e.what()));
  }
  try {
    o.combine.majority_sign_method = merge::parse_majority_sign(o.majority_sign);
  } catch (const ConfigError& e) {
    problems.push_back("--majority-sign: " + std::string(e.what()));
  }
  if (!problems.empty()) throw ConfigError("combine", join(problems, "; "));
  std::vector<io::NamedPath> in_paths = {{"--model", o.model.model_dir}};
  for (const auto& nd : named) in_paths.push_back({"--adapter", nd.dir});
  io::check_output_outside_inputs({"--out", o.out_dir}, in_paths, "combine");
  return named;
}

// save_pretrained writes an adapter other than "default" into DIR/<name>: stage the folder, move
// the adapter's files (and the model card) up to the staged folder's top, the layout
// `--adapter OUT` and PEFT's from_pretrained read, and publish it whole (io::StagedDirectory);
// files of a previous OUT other than an adapter's (its model card included) stay.
void write_adapter(const PeftModel& pm, const std::string& adapter, const std::string& out_dir) {
  io::StagedDirectory dir(out_dir, "combine");
  const fs::path top = dir.path();
  pm.save_pretrained(top.string(), std::vector<std::string>{adapter});
  const fs::path saved = io::adapter_subdir(top.string(), adapter);
  if (saved != top) {
    for (const char* file : {io::kAdapterConfigName, io::kAdapterWeightsName})
      fs::rename(saved / file, top / file);
    fs::remove_all(saved);
  }
  // A model card already in OUT is the user's: it stays, the new one is dropped.
  if (fs::exists(fs::path(out_dir) / "README.md")) fs::remove(top / "README.md");
  dir.publish([](const std::string& name) {
    return name != io::kAdapterConfigName && name != io::kAdapterWeightsName;
  });
}

void run(CombineOptions o) {
  const std::vector<NamedDir> inputs = validate(o);
  if (o.density_opt->count()) o.combine.density = o.density;
  if (o.svd_rank_opt->count()) o.combine.svd_rank = o.svd_rank;
  if (o.svd_clamp_opt->count()) o.combine.svd_clamp = o.svd_clamp;

  auto model = load_model(o.model);
  std::shared_ptr<PeftModel> pm;
  std::vector<std::string> names;
  for (const auto& in : inputs) {
    if (!pm) {
      pm = PeftModel::from_pretrained(model, in.dir, in.name);
    } else {
      pm->load_adapter(in.dir, in.name);
    }
    names.push_back(in.name);
  }
  // The combined adapter's name is not written anywhere; it only has to be new.
  std::string combined = "combined";
  for (int k = 2; std::find(names.begin(), names.end(), combined) != names.end(); ++k) {
    combined = "combined_" + std::to_string(k);
  }
  add_weighted_adapter(*pm, names, o.weights, combined, o.combine);
  fs::create_directories(o.out_dir);
  write_adapter(*pm, combined, o.out_dir);

  const LoraConfig& c = pm->peft_config(combined);
  // PEFT combines a single adapter as "linear" whatever the type.
  const CombinationType type =
      names.size() == 1 ? CombinationType::kLinear : o.combine.combination_type;
  std::cout << "combined " << names.size() << " adapter(s) with " << to_string(type)
            << ": r=" << c.r << ", lora_alpha=" << c.lora_alpha << "; wrote " << o.out_dir << "\n";
}

}  // namespace

void register_combine(CLI::App& app) {
  auto o = std::make_shared<CombineOptions>();
  auto* verb = app.add_subcommand("combine",
                                  "write one adapter combined from several (add_weighted_adapter)");
  add_model_options(verb, o->model);
  verb->add_option("--adapter", o->adapters,
                   "NAME=DIR: a PEFT adapter folder loaded as NAME (repeatable)")
      ->required();
  verb->add_option("--weights", o->weights, "one weight per --adapter, comma-separated")
      ->delimiter(',')
      ->required();
  verb->add_option("--type", o->type, "combination type: " + join(combination_type_spellings()))
      ->capture_default_str();
  o->density_opt =
      verb->add_option("--density", o->density, "TIES / DARE / magnitude_prune: fraction kept");
  verb->add_option("--majority-sign", o->majority_sign, "TIES: total | frequency")
      ->capture_default_str();
  o->svd_rank_opt = verb->add_option("--svd-rank", o->svd_rank,
                                     "SVD types: the new rank (default: largest input)");
  o->svd_clamp_opt =
      verb->add_option("--svd-clamp", o->svd_clamp,
                       "SVD types: clamp the factors to this quantile of their entries");
  verb->add_flag("--svd-full-matrices,!--no-svd-full-matrices", o->combine.svd_full_matrices,
                 "SVD types: full_matrices of torch.linalg.svd (default: on, as PEFT)");
  verb->add_option("--out", o->out_dir, "output adapter folder")->required();
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
