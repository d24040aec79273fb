// peft train --model DIR --data FILE --out DIR [...]: LoRA fine-tuning into a PEFT adapter folder.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "peft/config.h"
#include "peft/error.h"
#include "peft/generate.h"
#include "peft/io/json.h"
#include "peft/io/output_path.h"
#include "peft/io/read_file.h"
#include "peft/runtime.h"
#include "peft/tokenizer.h"
#include "peft/train/trainer.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

struct TrainOptions {
  ModelOptions model;
  std::string data, eval_data, out, config, adapter, resume;
  std::optional<int64_t> steps, epochs;
  std::string optimizer = "adamw", scheduler = "linear";
  train::TrainingArguments args;
  train::DataOptions data_options;
  bool no_shuffle = false;
  std::string sample_prompt;
  int64_t sample_tokens = 32;
  bool no_sample = false;
};

std::optional<Tokenizer> try_tokenizer(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / "tokenizer.json") &&
      !fs::exists(fs::path(dir) / "tokenizer.model")) {
    return std::nullopt;
  }
  return Tokenizer::from_dir(dir);
}

// The prompt shown before and after training: --sample-prompt, else the "prompt" of the first eval
// (or training) line; none (no sample) for other formats.
std::string default_sample_prompt(const std::string& path) {
  std::istringstream in(io::read_file(path, "data"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    io::check_json_depth(line, "data", path);
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return "";
    if (j.contains("prompt") && j["prompt"].is_string()) return j["prompt"].get<std::string>();
    return "";
  }
  return "";
}

// bf16: under autocast, as the model trained (its frozen Linear weights may be bfloat16 then).
std::string sample(models::PretrainedModel& model, const Tokenizer& tok, const std::string& prompt,
                   int64_t n, bool bf16) {
  GenerationConfig gen;
  gen.max_new_tokens = n;
  if (tok.eos_token_id()) gen.eos_token_ids = {*tok.eos_token_id()};
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  Bf16Autocast autocast(bf16);
  auto out = generate(model, {tok.encode(prompt)}, gen);
  if (was_training) model.train();
  return tok.decode(out.front(), /*skip_special_tokens=*/true);
}

// "title:" then the prompt and, in brackets, what the model wrote, each line indented.
void print_sample(const std::string& title, const std::string& prompt,
                  const std::string& generated) {
  std::string text = prompt + "[" + generated + "]";
  std::string out = "  ";
  for (const char c : text) {
    out += c;
    if (c == '\n') out += "  ";
  }
  std::cout << title << " (greedy; generated text in brackets):\n" << out << "\n";
}

void run(TrainOptions o) {
  PEFT_CHECK(o.config.empty() || o.adapter.empty(), ConfigError, "train",
             "give --config or --adapter, not both");
  PEFT_CHECK(o.resume.empty() || (o.config.empty() && o.adapter.empty()), ConfigError, "train",
             "--resume takes the adapter from the checkpoint; drop --config / --adapter");
  if (o.steps) o.args.max_steps = *o.steps;
  if (o.epochs) o.args.num_train_epochs = *o.epochs;
  PEFT_CHECK(!(o.steps && o.epochs), ConfigError, "train", "give --steps or --epochs, not both");
  o.args.optimizer = train::parse_optimizer_kind(o.optimizer);
  o.args.lr_scheduler = train::parse_schedule_kind(o.scheduler);
  o.args.shuffle = !o.no_shuffle;
  o.args.output_dir = o.out;
  o.model.bf16_autocast = o.args.bf16;
  // Only the adapter is kept, so the frozen base may stay in bfloat16 (frozen_bf16.h).
  o.args.bf16_frozen_weights = o.args.bf16;
  train::check_training_arguments(o.args);  // before anything is loaded or printed
  const std::vector<io::NamedPath> inputs = {{"--model", o.model.model_dir},
                                             {"--data", o.data},
                                             {"--eval-data", o.eval_data},
                                             {"--config", o.config},
                                             {"--adapter", o.adapter}};
  io::check_output_outside_inputs({"--out", o.out}, inputs, "train");
  io::check_output_outside_inputs({"--log-file", o.args.log_file}, inputs, "train");
  // Everything is read and checked before anything is written.
  const auto tokenizer = try_tokenizer(o.model.model_dir);
  const Tokenizer* tok = tokenizer ? &*tokenizer : nullptr;
  // A training step allocates the same large tensors every time: keep them (runtime.h).
  keep_freed_memory_for_reuse();
  auto model = load_model(o.model);
  o.data_options.classification = model->task() == models::ModelTask::kSequenceClassification;
  o.data_options.max_tokens = models::max_position_embeddings(*model).value_or(0);
  auto train_data = train::load_jsonl(o.data, tok, o.data_options);
  std::vector<train::Example> eval_data;
  if (!o.eval_data.empty()) eval_data = train::load_jsonl(o.eval_data, tok, o.data_options);
  // transformers' Trainer calls set_seed(args.seed) first: adapter init and dropout masks follow
  // --seed.
  torch::manual_seed(o.args.seed);
  std::shared_ptr<PeftModel> pm;
  if (!o.resume.empty()) {
    pm = PeftModel::from_pretrained(model, o.resume, "default", /*is_trainable=*/true);
  } else if (!o.adapter.empty()) {
    pm = PeftModel::from_pretrained(model, o.adapter, "default", /*is_trainable=*/true);
  } else {
    LoraConfig config;
    if (!o.config.empty()) {
      config = load_lora_config(o.config);
    } else {
      config.r = 8;
      config.lora_alpha = 16;
      config.lora_dropout = 0.05;
    }
    pm = std::make_shared<PeftModel>(model, config, "default");
  }
  std::cout << pm->trainable_parameters_line() << "\n";
  const std::string prompt =
      !o.sample_prompt.empty() ? o.sample_prompt
                               : default_sample_prompt(o.eval_data.empty() ? o.data : o.eval_data);
  const bool show_sample =
      !o.no_sample && tok && !prompt.empty() && model->task() == models::ModelTask::kCausalLm;
  if (show_sample)
    print_sample("sample before training", prompt,
                 sample(*model, *tok, prompt, o.sample_tokens, /*bf16=*/false));
  train::Trainer trainer(model, pm, o.args, std::move(train_data), std::move(eval_data));
  if (!o.resume.empty()) {
    trainer.resume_from_checkpoint(o.resume);
    std::cout << "resumed from " << o.resume << "\n";
  }
  std::cout << "training " << trainer.total_steps() << " steps ("
            << train::to_string(o.args.optimizer) << ", lr " << o.args.adamw.lr << ", "
            << train::to_string(o.args.lr_scheduler) << " schedule)\n";
  const auto result = trainer.train();
  std::cout << std::fixed << std::setprecision(4);
  if (result.eval_loss_before && result.eval_loss_after) {
    std::cout << "eval loss: " << *result.eval_loss_before << " -> " << *result.eval_loss_after
              << "\n";
  }
  std::cout << std::setprecision(1) << "trained " << result.steps << " steps in " << result.seconds
            << " s (" << result.tokens_per_second << " tokens/s)\n";
  if (!result.step_seconds.empty()) {
    // The steady-state speed, comparable between runs (train_log.jsonl has every step_time_s).
    std::cout << std::setprecision(3) << "speed: median step " << result.median_step_seconds
              << " s, " << std::setprecision(1) << result.steady_tokens_per_second
              << " tokens/s over " << result.step_seconds.size() - result.warmup_steps
              << " step(s) after " << result.warmup_steps << " warm-up step(s); "
              << at::get_num_threads() << " thread(s)" << (o.args.bf16 ? ", bf16 autocast" : "")
              << "\n";
  }
  if (show_sample)
    print_sample("sample after training", prompt,
                 sample(*model, *tok, prompt, o.sample_tokens, o.args.bf16));
  const fs::path out(o.out);
  std::cout << "adapter saved to " << out.string()
            << " (adapter_config.json, adapter_model.safetensors); loss curve "
            << (out / "loss_curve.svg").string() << "; log "
            << (o.args.log_file.empty() ? (out / "train_log.jsonl").string() : o.args.log_file)
            << "\n";
}

}  // namespace

void register_train(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  auto* v =
      app.add_subcommand("train", "fine-tune a LoRA adapter; the output folder is a PEFT adapter");
  add_model_options(v, o->model);
  add_quantize_options(v, o->model);
  v->add_option("--data", o->data,
                "training data (JSONL: text | prompt+completion | messages | input_ids)")
      ->required();
  v->add_option("--out", o->out, "output folder (PEFT adapter, log, loss_curve.svg, checkpoints)")
      ->required();
  v->add_option("--config", o->config, "adapter_config.json / LoraConfig JSON for a new adapter");
  v->add_option("--adapter", o->adapter,
                "start from this PEFT adapter folder (config and weights)");
  v->add_option("--eval-data", o->eval_data,
                "held-out JSONL; eval loss before, during and after training");
  // Counts are checked here (CLI11's validators: a usage error, exit 2), not silently replaced.
  v->add_option("--steps", o->steps, "optimizer updates")->check(CLI::PositiveNumber);
  v->add_option("--epochs", o->epochs, "passes over the data (default 1)")
      ->check(CLI::PositiveNumber);
  v->add_option("--batch-size", o->args.batch_size, "examples per micro-batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  v->add_option("--grad-accum", o->args.gradient_accumulation_steps, "micro-batches per update")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  v->add_option("--lr", o->args.adamw.lr, "learning rate")->capture_default_str();
  v->add_option("--weight-decay", o->args.adamw.weight_decay, "decoupled weight decay")
      ->capture_default_str();
  v->add_option("--adam-eps", o->args.adamw.eps, "AdamW epsilon")->capture_default_str();
  v->add_option("--optimizer", o->optimizer, "adamw | loraplus | lorafa")->capture_default_str();
  v->add_option("--loraplus-lr-ratio", o->args.loraplus.loraplus_lr_ratio,
                "LoRA+: lr of B = lr x ratio")
      ->capture_default_str();
  v->add_option("--loraplus-lr-embedding", o->args.loraplus.loraplus_lr_embedding,
                "LoRA+: lr of embedding factors")
      ->capture_default_str();
  v->add_option("--lr-scheduler", o->scheduler, "constant | linear | cosine")
      ->capture_default_str();
  v->add_option("--warmup-steps", o->args.warmup_steps, "linear warmup updates")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  v->add_option("--max-grad-norm", o->args.max_grad_norm, "clip the gradient norm (0: off)")
      ->capture_default_str();
  v->add_flag("--no-shuffle", o->no_shuffle, "keep the data order");
  v->add_option("--seed", o->args.seed, "seed of the shuffling, adapter init and dropout")
      ->capture_default_str();
  v->add_option("--log-file", o->args.log_file, "JSONL log (default OUT/train_log.jsonl)");
  v->add_option("--log-every", o->args.log_every,
                "progress line every N updates (non-terminal output)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  v->add_option("--eval-every", o->args.eval_every,
                "evaluate every N updates (0: before and after only)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  v->add_option("--save-every", o->args.save_every, "checkpoint every N updates (0: none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  v->add_option("--resume", o->resume, "continue from OUT/checkpoint-<step>");
  v->add_option("--max-length", o->data_options.max_length,
                "truncate (or, with --packing, cut) to N tokens (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  v->add_flag("--packing", o->data_options.packing,
              "concatenate examples into blocks of --max-length tokens");
  v->add_flag("--gradient-checkpointing", o->args.gradient_checkpointing,
              "recompute activations in backward");
  v->add_flag("--bf16", o->args.bf16,
              "bfloat16 mixed precision (autocast; float32 adapter weights and optimizer state; "
              "frozen Linear weights held in bfloat16)");
  v->add_option("--sample-prompt", o->sample_prompt,
                "prompt generated from before and after training");
  v->add_option("--sample-tokens", o->sample_tokens, "tokens of the sample generation")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  v->add_flag("--no-sample", o->no_sample, "skip the sample generations");
  v->callback([o] { run(*o); });
}

}  // namespace peft::cli
