// Shared plumbing of the `peft` verbs: model / adapter options, loading, dtype parsing.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace peft::cli {

struct ModelOptions {
  std::string model_dir;
  std::string dtype = "float32";
  int threads = 0;
  bool bf16_autocast = false;  // set by `peft train --bf16`: the thread plan's low-precision case
  // QLoRA-style quantized base (empty = float): nf4 | fp4 | int8.
  std::string quantize;
  bool double_quant = false;
  int64_t quant_blocksize = 64;
  double int8_threshold = 6.0;  // transformers' BitsAndBytesConfig default llm_int8_threshold
};

// --model DIR, --dtype, --threads.
void add_model_options(CLI::App* verb, ModelOptions& options);
// --quantize nf4|fp4|int8, --double-quant, --quant-blocksize, --int8-threshold.
void add_quantize_options(CLI::App* verb, ModelOptions& options);
// Sets the thread count and loads the checkpoint.
std::shared_ptr<models::PretrainedModel> load_model(const ModelOptions& options);

// The folder of an --adapter entry: DIR for "NAME=DIR" (a NAME has no '/'), else the entry.
std::string adapter_dir_of(const std::string& entry);

// Loads adapter folders onto `model`: an entry NAME=DIR under NAME; a plain DIR as "default" when
// first, else under its folder name (made unique). All become active (outputs summed). Returns
// nullptr when `dirs` is empty.
std::shared_ptr<PeftModel> load_adapters(const std::shared_ptr<models::PretrainedModel>& model,
                                         const std::vector<std::string>& dirs,
                                         bool is_trainable = false);

// Writes `model` as a checkpoint folder `out_dir` (models::save_pretrained, plus the tokenizer and
// generation files of `source_dir`), whole or not at all: it is built beside `out_dir` and
// published in one rename (io::StagedDirectory). Of a previous `out_dir`, files other than a
// model's config, weights and tokenizer stay.
void save_model_folder(const models::PretrainedModel& model, const std::string& source_dir,
                       const std::string& out_dir, const char* component);

// Verb registration: each adds its subcommand with a callback to `app`.
void register_inspect(CLI::App& app);
void register_logits(CLI::App& app);
void register_merge(CLI::App& app);
void register_generate(CLI::App& app);
void register_train(CLI::App& app);
void register_init(CLI::App& app);
void register_combine(CLI::App& app);

}  // namespace peft::cli
