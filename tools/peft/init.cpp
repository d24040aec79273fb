// peft init --model DIR --config lora.json --out DIR [--data FILE]: initialises an adapter (any
// init_lora_weights, data-driven ones from --data) and writes it as a PEFT folder; for the inits
// that change the base weights (PiSSA, OLoRA, CorDA, LoRA-GA) also the residual base as a
// checkpoint folder (OUT/residual_model by default). The adapter's config then says
// init_lora_weights = true (PEFT's documented workflow), so that
// `--model OUT/residual_model --adapter OUT` reproduces the initialised model and OUT can later
// serve as path_initial_model_for_weight_conversion.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>

#include "common.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/init/corda.h"
#include "peft/init/eva.h"
#include "peft/init/loraga.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/output_path.h"
#include "peft/lora/layer.h"
#include "peft/tokenizer.h"
#include "peft/train/data.h"
#include "peft/train/loss.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

struct InitOptions {
  ModelOptions model;
  std::string config, out, data, residual_out, cache;
  int64_t batch_size = 4;
  int64_t max_batches = 0;  // 0 = all
  uint64_t seed = 42;
  train::DataOptions data_options;
};

using K = InitLoraWeights::Kind;

std::vector<train::Batch> load_batches(const InitOptions& o, const models::PretrainedModel& model) {
  PEFT_CHECK(fs::exists(fs::path(o.model.model_dir) / "tokenizer.json") ||
                 fs::exists(fs::path(o.model.model_dir) / "tokenizer.model"),
             ConfigError, "init",
             "--data needs the model's tokenizer (tokenizer.json or tokenizer.model) in --model");
  const Tokenizer tok = Tokenizer::from_dir(o.model.model_dir);
  train::DataOptions d = o.data_options;
  d.classification = model.task() == models::ModelTask::kSequenceClassification;
  d.max_tokens = models::max_position_embeddings(model).value_or(0);
  auto examples = train::load_jsonl(o.data, &tok, d);
  PEFT_CHECK(!examples.empty(), ConfigError, "init", "\"" << o.data << "\" holds no examples");
  const int64_t pad = tok.pad_token_id().value_or(tok.eos_token_id().value_or(0));
  std::vector<train::Batch> batches;
  for (size_t i = 0; i < examples.size(); i += static_cast<size_t>(o.batch_size)) {
    std::vector<const train::Example*> chunk;
    for (size_t j = i; j < std::min(examples.size(), i + static_cast<size_t>(o.batch_size)); ++j) {
      chunk.push_back(&examples[j]);
    }
    batches.push_back(train::collate(chunk, pad));
    if (o.max_batches > 0 && static_cast<int64_t>(batches.size()) >= o.max_batches) break;
  }
  return batches;
}

at::Tensor forward(models::PretrainedModel& model, const train::Batch& b) {
  models::ForwardInput in;
  in.input_ids = b.input_ids;
  in.attention_mask = b.attention_mask;
  in.token_type_ids = b.token_type_ids;
  return model.forward(in);
}

void run(const InitOptions& o) {
  LoraConfig config = load_lora_config(o.config);
  const K kind = config.init_lora_weights.kind;
  PEFT_CHECK(!config.init_lora_weights.needs_data() || !o.data.empty(), ConfigError, "init",
             "init_lora_weights=\"" << to_string(config.init_lora_weights)
                                    << "\" learns from data: pass --data FILE "
                                    << "(JSONL as for `peft train`)");
  const std::string residual =
      o.residual_out.empty() ? (fs::path(o.out) / "residual_model").string() : o.residual_out;
  const std::vector<io::NamedPath> inputs = {
      {"--model", o.model.model_dir}, {"--config", o.config}, {"--data", o.data}};
  io::check_output_outside_inputs({"--out", o.out}, inputs, "init");
  if (config.init_lora_weights.mutates_base()) {
    io::check_output_outside_inputs({"--residual-out", residual}, inputs, "init");
  }
  auto model = load_model(o.model);
  std::vector<train::Batch> batches;
  if (config.init_lora_weights.needs_data()) batches = load_batches(o, *model);
  torch::manual_seed(o.seed);
  if (kind == K::kCorda) {
    if (!o.cache.empty()) {
      if (!config.corda_config) config.corda_config = CordaConfig{};
      config.corda_config->cache_file = o.cache;
    }
    preprocess_corda(*model, config, [&] {
      for (const auto& b : batches) (void)forward(*model, b);
    });
  } else if (kind == K::kLoraGa) {
    if (!config.lora_ga_config) config.lora_ga_config = LoraGAConfig{};
    PEFT_CHECK(model->task() == models::ModelTask::kCausalLm, UnsupportedError, "init",
               "LoRA-GA's gradient estimation runs the causal-LM loss; this model is a sequence "
               "classifier");
    preprocess_loraga(
        *model, config,
        [&] {
          for (const auto& b : batches) {
            model->zero_grad();
            train::causal_lm_loss(forward(*model, b), b.labels).backward();
          }
        },
        o.cache);
  }
  // LoftQ: the targeted weights before initialisation, to show the quantization error it removes.
  std::map<std::string, at::Tensor> originals;
  if (kind == K::kLoftq) {
    for (const auto& [name, layer] : find_target_layers(*model, config)) {
      originals[name] = layer->float_weight().detach().to(at::kFloat).clone();
    }
  }
  auto pm = std::make_shared<PeftModel>(model, config, "default");
  if (kind == K::kLoftq) {
    double before = 0, after = 0;  // sums of squares over the targeted layers
    for (auto& [name, layer] : nn::lora_layers(*model)) {
      auto it = originals.find(name);
      if (it == originals.end() || !layer->has_adapter("default")) continue;
      const at::Tensor Q = layer->float_weight().to(at::kFloat);
      const at::Tensor W = it->second;
      before += (W - Q).pow(2).sum().item<double>();
      after +=
          (W - Q - layer->get_delta_weight("default").to(at::kFloat)).pow(2).sum().item<double>();
    }
    std::cout << "LoftQ quantization error ||W - Q||_F: " << std::sqrt(before)
              << " -> ||W - (Q + s B A)||_F: " << std::sqrt(after) << " (over " << originals.size()
              << " layers)\n";
  }
  if (kind == K::kEva) {
    EvaOptions eo;
    eo.show_progress = true;
    initialize_lora_eva_weights(
        *pm, batches, [&](const train::Batch& b) { (void)forward(*model, b); }, "default", eo);
  }
  std::cout << pm->trainable_parameters_line() << "\n";
  if (config.init_lora_weights.mutates_base()) {
    // PEFT's workflow: the initial adapter says init_lora_weights = true, so loading it onto the
    // residual base does not run the decomposition again.
    LoraConfig saved = pm->peft_config("default");
    saved.init_lora_weights = InitLoraWeights{};
    pm->update_peft_config("default", saved);
  }
  pm->save_pretrained(o.out);
  std::cout << "adapter (" << to_string(config.init_lora_weights) << "): " << o.out << "\n";
  if (config.init_lora_weights.mutates_base()) {
    pm->unload();  // the base now holds the residual weights
    save_model_folder(*model, o.model.model_dir, residual, "init");
    std::cout << "residual base model: " << residual << " (use it as --model with this adapter)\n";
  }
}

}  // namespace

void register_init(CLI::App& app) {
  auto o = std::make_shared<InitOptions>();
  auto* verb = app.add_subcommand(
      "init",
      "initialise an adapter (PiSSA, OLoRA, orthogonal, EVA, CorDA, LoRA-GA, ...) "
      "and write it, plus the residual base for inits that change it");
  add_model_options(verb, o->model);
  verb->add_option("--config", o->config,
                   "LoraConfig JSON (adapter_config.json keys; init_lora_weights picks the method)")
      ->required();
  verb->add_option("--out", o->out, "output adapter folder")->required();
  verb->add_option("--data", o->data,
                   "JSONL data for EVA / CorDA / LoRA-GA (formats of `peft train`)");
  verb->add_option("--batch-size", o->batch_size, "rows per batch of --data (default 4)")
      ->check(CLI::PositiveNumber);
  verb->add_option("--max-batches", o->max_batches,
                   "use at most N batches of --data (default: all)");
  verb->add_option("--max-length", o->data_options.max_length, "truncate examples to N tokens");
  verb->add_option("--residual-out", o->residual_out,
                   "folder of the residual base (default OUT/residual_model)");
  verb->add_option("--cache", o->cache,
                   "CorDA / LoRA-GA cache file (safetensors): reused when present, else written");
  verb->add_option("--seed", o->seed, "seed of random draws (default 42)");
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
