// The training loop: micro-batches, accumulation, clipping, schedule, optimizer, evaluation,
// progress.
#include "peft/train/trainer.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "peft/error.h"
#include "peft/io/crash_point.h"
#include "peft/io/staged_directory.h"
#include "peft/lora/variants/monteclora.h"
#include "peft/runtime.h"
#include "peft/train/frozen_bf16.h"
#include "peft/train/loss.h"
#include "peft/train/loss_plot.h"
#include "peft/train/progress.h"
#include "trainer_state.h"

namespace fs = std::filesystem;

namespace peft::train {

int64_t speed_warmup_steps(int64_t steps) { return std::clamp<int64_t>(steps - 1, 0, 2); }

namespace {

// The steady-state speed of a run: median step time and tokens / s over the steps after warm-up.
void summarize_speed(TrainResult& result, const std::vector<int64_t>& step_tokens) {
  const auto n = static_cast<int64_t>(result.step_seconds.size());
  if (n == 0) return;
  result.warmup_steps = speed_warmup_steps(n);
  std::vector<double> steady(result.step_seconds.begin() + result.warmup_steps,
                             result.step_seconds.end());
  double seconds = 0;
  int64_t tokens = 0;
  for (int64_t i = result.warmup_steps; i < n; ++i) {
    seconds += result.step_seconds[static_cast<size_t>(i)];
    tokens += step_tokens[static_cast<size_t>(i)];
  }
  std::sort(steady.begin(), steady.end());
  const size_t m = steady.size();
  result.median_step_seconds = m % 2 ? steady[m / 2] : 0.5 * (steady[m / 2 - 1] + steady[m / 2]);
  result.steady_tokens_per_second = seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
}

}  // namespace

namespace {

using json = nlohmann::json;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Padding is masked out (attention_mask 0, label -100), so its id only has to be a valid one.
constexpr int64_t kPadId = 0;

at::Tensor batch_loss(models::PretrainedModel& model, const Batch& b, c10::Device device,
                      bool bf16) {
  Bf16Autocast autocast(bf16);
  models::ForwardInput in;
  in.input_ids = b.input_ids.to(device);
  // An all-ones mask is left out: the model then takes its plain causal path, as transformers does
  // without one.
  if (b.attention_mask.numel() != b.num_tokens) in.attention_mask = b.attention_mask.to(device);
  if (b.token_type_ids.defined()) in.token_type_ids = b.token_type_ids.to(device);
  const at::Tensor logits = model.forward(in);
  const at::Tensor labels = b.labels.to(device);
  return model.task() == models::ModelTask::kCausalLm
             ? causal_lm_loss(logits, labels)
             : sequence_classification_loss(logits, labels);
}

}  // namespace

int64_t Trainer::State::micro_batches_per_epoch() const {
  return ceil_div(static_cast<int64_t>(train.size()), args.batch_size);
}

void check_training_arguments(const TrainingArguments& args) {
  PEFT_CHECK(args.batch_size > 0, ConfigError, "trainer",
             "batch_size must be > 0; got " << args.batch_size);
  PEFT_CHECK(args.gradient_accumulation_steps > 0, ConfigError, "trainer",
             "gradient_accumulation_steps must be > 0; got " << args.gradient_accumulation_steps);
  PEFT_CHECK(args.max_steps > 0 || args.num_train_epochs > 0, ConfigError, "trainer",
             "give max_steps > 0 or num_train_epochs > 0");
  // A NaN or infinite hyperparameter would train an all-NaN adapter and save it.
  const std::pair<const char*, double> finite[] = {
      {"lr", args.adamw.lr},
      {"weight_decay", args.adamw.weight_decay},
      {"adam beta1", args.adamw.beta1},
      {"adam beta2", args.adamw.beta2},
      {"adam eps", args.adamw.eps},
      {"max_grad_norm", args.max_grad_norm},
      {"loraplus_lr_ratio", args.loraplus.loraplus_lr_ratio},
      {"loraplus_lr_embedding", args.loraplus.loraplus_lr_embedding}};
  for (const auto& [name, value] : finite) {
    PEFT_CHECK(std::isfinite(value) && value >= 0, ConfigError, "trainer",
               name << " must be a finite number >= 0; got " << value);
  }
  PEFT_CHECK(!args.bf16_frozen_weights || args.bf16, ConfigError, "trainer",
             "bf16_frozen_weights needs bf16: a bfloat16 weight outside autocast meets float32 "
             "activations; set bf16 too");
  PEFT_CHECK(args.warmup_steps >= 0, ConfigError, "trainer",
             "warmup_steps must be >= 0; got " << args.warmup_steps);
}

Trainer::Trainer(std::shared_ptr<models::PretrainedModel> model, std::shared_ptr<PeftModel> peft,
                 TrainingArguments args, std::vector<Example> train_data,
                 std::vector<Example> eval_data)
    : s_(std::make_unique<State>()) {
  PEFT_CHECK(model && peft, ConfigError, "trainer", "a model with an injected adapter is required");
  PEFT_CHECK(!train_data.empty(), ConfigError, "trainer", "the training data is empty");
  check_training_arguments(args);
  PEFT_CHECK(!args.output_dir.empty(), ConfigError, "trainer", "output_dir is required");
  s_->model = std::move(model);
  s_->peft = std::move(peft);
  s_->args = std::move(args);
  s_->train = std::move(train_data);
  s_->eval = std::move(eval_data);
  s_->device = s_->model->parameters().front().device();
  check_token_ids(s_->train, s_->model->vocab_size(), "training data");
  check_token_ids(s_->eval, s_->model->vocab_size(), "eval data");
  if (s_->args.bf16_frozen_weights) store_frozen_linear_weights_in_bf16(*s_->model);
  switch (s_->args.optimizer) {
    case OptimizerKind::kAdamW:
      s_->optimizer = create_adamw_optimizer(*s_->model, s_->args.adamw);
      break;
    case OptimizerKind::kLoraPlus:
      s_->optimizer = create_loraplus_optimizer(*s_->model, s_->args.adamw, s_->args.loraplus);
      break;
    case OptimizerKind::kLoraFa:
      s_->optimizer = create_lorafa_optimizer(*s_->peft, s_->args.adamw);
      break;
  }
  s_->schedule = LrSchedule{.kind = s_->args.lr_scheduler,
                            .warmup_steps = s_->args.warmup_steps,
                            .total_steps = total_steps()};
  s_->order =
      epoch_order(static_cast<int64_t>(s_->train.size()), s_->args.seed, 0, s_->args.shuffle);
  if (s_->args.gradient_checkpointing) s_->model->gradient_checkpointing_enable();
}

Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const {
  if (s_->args.max_steps > 0) return s_->args.max_steps;
  return s_->args.num_train_epochs *
         ceil_div(s_->micro_batches_per_epoch(), s_->args.gradient_accumulation_steps);
}

Optimizer& Trainer::optimizer() { return *s_->optimizer; }

double Trainer::evaluate() {
  PEFT_CHECK(!s_->eval.empty(), ConfigError, "trainer", "no eval data was given");
  const bool was_training = s_->model->is_training();
  s_->model->eval();
  torch::NoGradGuard no_grad;
  const int64_t bs = s_->args.eval_batch_size > 0 ? s_->args.eval_batch_size : s_->args.batch_size;
  double sum = 0;
  int64_t count = 0;
  for (size_t i = 0; i < s_->eval.size(); i += static_cast<size_t>(bs)) {
    std::vector<const Example*> rows;
    for (size_t j = i; j < std::min(s_->eval.size(), i + static_cast<size_t>(bs)); ++j)
      rows.push_back(&s_->eval[j]);
    const Batch b = collate(rows, kPadId);
    if (b.num_label_tokens == 0) continue;
    sum += batch_loss(*s_->model, b, s_->device, s_->args.bf16).item<double>() *
           static_cast<double>(b.num_label_tokens);
    count += b.num_label_tokens;
  }
  if (was_training) s_->model->train();
  return count == 0 ? std::nan("") : sum / static_cast<double>(count);
}

TrainResult Trainer::train() {
  State& s = *s_;
  std::ostream& os = out ? *out : std::cout;
  const int64_t total = total_steps();
  const int64_t accum = s.args.gradient_accumulation_steps;
  const int64_t n = static_cast<int64_t>(s.train.size());
  fs::create_directories(s.args.output_dir);
  // What a killed run left half-written (temporary files, unpublished checkpoint folders) goes.
  if (const int n_stale = io::remove_stale_temporaries(s.args.output_dir); n_stale > 0)
    warn("trainer", "removed " + std::to_string(n_stale) + " unfinished file(s) left in " +
                        s.args.output_dir + " by an interrupted run");
  s.start_log(/*keep_history=*/s.global_step > 0);
  ProgressReporter progress(os, !quiet && out == nullptr && ProgressReporter::stdout_is_terminal(),
                            std::max<int64_t>(1, s.args.log_every));
  auto say = [&](const std::string& line) {
    if (!quiet) progress.message(line);
  };
  TrainResult result;
  if (!s.eval.empty() && s.global_step == 0) {
    result.eval_loss_before = evaluate();
    s.append_log({{"step", 0}, {"eval_loss", *result.eval_loss_before}});
    say("eval loss before training: " + std::to_string(*result.eval_loss_before));
  }
  s.model->train();
  // Whether an active adapter is MonteCLoRA, decided once: the regulariser walks every LoRA layer,
  // which the other adapters' steps need not pay for.
  bool uses_monteclora = false;
  if (s.peft) {
    for (const auto& a : s.peft->active_adapters())
      uses_monteclora = uses_monteclora || s.peft->peft_config(a).monteclora_config.has_value();
  }
  const auto start = std::chrono::steady_clock::now();
  int64_t tokens_this_run = 0;
  std::vector<int64_t> step_tokens;  // tokens of each update of this run
  while (s.global_step < total) {
    // The micro-batches of this update: up to `accum`, fewer at the end of an epoch (as
    // transformers' Trainer).
    std::vector<Batch> micro;
    while (static_cast<int64_t>(micro.size()) < accum) {
      if (s.cursor >= s.micro_batches_per_epoch()) {
        if (!micro.empty()) break;
        ++s.epoch;
        s.cursor = 0;
        s.order = epoch_order(n, s.args.seed, s.epoch, s.args.shuffle);
      }
      std::vector<const Example*> rows;
      for (int64_t i = s.cursor * s.args.batch_size;
           i < std::min(n, (s.cursor + 1) * s.args.batch_size); ++i) {
        rows.push_back(&s.train[static_cast<size_t>(s.order[static_cast<size_t>(i)])]);
      }
      micro.push_back(collate(rows, kPadId));
      ++s.cursor;
    }
    const auto step_start = std::chrono::steady_clock::now();
    int64_t label_tokens = 0, tokens = 0;
    for (const auto& b : micro) {
      label_tokens += b.num_label_tokens;
      tokens += b.num_tokens;
    }
    // The loss of the whole update is the mean over all its label tokens (transformers'
    // num_items_in_batch), so k micro-batches of b/k give the update of one batch of b.
    double loss = std::nan("");
    std::optional<double> monteclora;
    if (label_tokens > 0) {
      loss = 0;
      for (const auto& b : micro) {
        if (b.num_label_tokens == 0) continue;
        const double weight =
            static_cast<double>(b.num_label_tokens) / static_cast<double>(label_tokens);
        at::Tensor l = batch_loss(*s.model, b, s.device, s.args.bf16);
        // MonteCLoRA adapters add their regulariser to the task loss (PEFT's
        // MontecloraTrainerMixin), computed from this forward's samples.
        if (uses_monteclora) {
          const at::Tensor reg = nn::monteclora_loss(*s.model, s.peft->active_adapters());
          if (reg.defined()) {
            monteclora = monteclora.value_or(0.0) + reg.item<double>() * weight;
            l = l + reg;
          }
        }
        loss += l.item<double>() * weight;
        (weight == 1.0 ? l : l * weight).backward();
      }
    } else {
      warn("trainer",
           "update " + std::to_string(s.global_step + 1) + " has no label tokens; skipped");
    }
    io::crash_point("train:step");
    std::optional<double> grad_norm;
    if (s.args.max_grad_norm > 0)
      grad_norm = clip_grad_norm(s.optimizer->parameters(), s.args.max_grad_norm);
    const double factor = s.schedule.factor(s.global_step);
    for (auto& g : s.optimizer->param_groups()) g.lr = g.initial_lr * factor;
    const double lr = s.optimizer->param_groups().front().lr;
    if (label_tokens > 0) s.optimizer->step();
    s.optimizer->zero_grad();
    const double step_time =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    result.step_seconds.push_back(step_time);
    step_tokens.push_back(tokens);
    ++s.global_step;
    s.tokens_seen += tokens;
    tokens_this_run += tokens;
    result.losses.push_back(loss);
    json record = {{"step", s.global_step}, {"loss", loss},     {"lr", lr},
                   {"epoch", s.epoch},      {"tokens", tokens}, {"step_time_s", step_time}};
    if (grad_norm) record["grad_norm"] = *grad_norm;
    if (monteclora) record["monteclora_loss"] = *monteclora;
    s.append_log(std::move(record));
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!quiet) {
      progress.update(
          {.step = s.global_step,
           .total_steps = total,
           .loss = loss,
           .lr = lr,
           .tokens_per_second = elapsed > 0 ? static_cast<double>(tokens_this_run) / elapsed : 0.0,
           .elapsed_seconds = elapsed,
           .grad_norm = grad_norm,
           .epoch_index = s.epoch});
    }
    if (s.args.eval_every > 0 && !s.eval.empty() && s.global_step % s.args.eval_every == 0 &&
        s.global_step < total) {
      const double e = evaluate();
      s.append_log({{"step", s.global_step}, {"eval_loss", e}});
      say("eval loss at step " + std::to_string(s.global_step) + ": " + std::to_string(e));
    }
    if (s.args.save_every > 0 && s.global_step % s.args.save_every == 0) {
      s.save_checkpoint();
      say("checkpoint saved: " +
          (fs::path(s.args.output_dir) / ("checkpoint-" + std::to_string(s.global_step))).string());
    }
    if (should_stop && should_stop(s.global_step)) break;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second =
      result.seconds > 0 ? static_cast<double>(tokens_this_run) / result.seconds : 0.0;
  result.steps = s.global_step;
  summarize_speed(result, step_tokens);
  if (!quiet) progress.finish();
  const bool finished = s.global_step >= total;
  if (finished && !s.eval.empty()) {
    result.eval_loss_after = evaluate();
    s.append_log({{"step", s.global_step}, {"eval_loss", *result.eval_loss_after}});
    say("eval loss after training: " + std::to_string(*result.eval_loss_after));
  }
  if (finished && s.args.save_adapter) {
    s.peft->save_pretrained(s.args.output_dir);
    result.adapter_dir = s.args.output_dir;
  }
  if (finished && s.args.write_loss_plot) {
    LossPlotData plot;
    plot.title = "LoRA training: " + s.model->name_or_path();
    for (const auto& r : s.log_history) {
      if (r.contains("loss"))
        plot.train.push_back({r["step"].get<int64_t>(), r["loss"].get<double>()});
      if (r.contains("eval_loss"))
        plot.eval.push_back({r["step"].get<int64_t>(), r["eval_loss"].get<double>()});
    }
    write_loss_plot((fs::path(s.args.output_dir) / "loss_curve.svg").string(), plot);
  }
  s.publish_log();
  return result;
}

}  // namespace peft::train
