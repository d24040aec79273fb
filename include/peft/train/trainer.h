// The adapter trainer: the loop of transformers' Trainer for a PeftModel (micro-batches, gradient
// accumulation normalised by the label-token count of the whole step, clipping, schedule,
// optimizer), with evaluation, atomic checkpoints and exact resume, progress display, a JSONL log
// and a loss-curve picture.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/train/data.h"
#include "peft/train/optimizer.h"
#include "peft/train/schedule.h"

namespace peft {
class PeftModel;
namespace models {
class PretrainedModel;
}
}  // namespace peft

namespace peft::train {

struct TrainingArguments {
  std::string
      output_dir;  // the adapter, log and loss picture go here; checkpoints in checkpoint-<step>/
  int64_t max_steps = -1;  // optimizer updates; > 0 overrides num_train_epochs
  int64_t num_train_epochs = 1;
  int64_t batch_size = 8;  // examples per micro-batch
  int64_t gradient_accumulation_steps = 1;
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  AdamWOptions adamw{.lr = 2e-4, .weight_decay = 0.0};
  LoraPlusOptions loraplus;
  ScheduleKind lr_scheduler = ScheduleKind::kLinear;
  int64_t warmup_steps = 0;
  double max_grad_norm = 0.0;  // > 0: clip_grad_norm_ before every update
  bool shuffle = true;
  uint64_t seed = 42;
  int64_t save_every = 0;       // > 0: checkpoint every N updates
  int64_t eval_every = 0;       // > 0: evaluation every N updates (also before and after training)
  int64_t eval_batch_size = 0;  // 0 = batch_size
  int64_t log_every = 10;       // plain progress lines every N updates
  std::string log_file;         // JSONL log; default <output_dir>/train_log.jsonl
  bool gradient_checkpointing = false;
  // bfloat16 mixed precision (transformers' bf16=True): forward and loss under CPU autocast
  // (peft::Bf16Autocast), training and evaluation alike; parameters, gradients and the optimizer
  // state stay float32.
  bool bf16 = false;
  // With bf16: the frozen Linear base weights are held in bfloat16 for the run
  // (peft/train/frozen_bf16.h; the values autocast computes with, about half the base's memory, no
  // per-step casts). They stay bfloat16 after training: for runs that keep only the adapter.
  bool bf16_frozen_weights = false;
  bool save_adapter = true;     // save_pretrained(output_dir) at the end
  bool write_loss_plot = true;  // <output_dir>/loss_curve.svg
};

// ConfigError naming the first bad argument: counts out of range, or a NaN / infinite / negative
// hyperparameter (which would train an all-NaN adapter and save it). The Trainer calls it; callers
// may call it first to fail before loading anything.
void check_training_arguments(const TrainingArguments& args);

struct TrainResult {
  std::vector<double> losses;  // per update, measured before the update
  std::optional<double> eval_loss_before, eval_loss_after;
  int64_t steps = 0;  // updates done in total (including those before a resume)
  double seconds = 0;
  double tokens_per_second = 0;
  // Wall time of each update of this run (forward + backward + optimizer step; the log's
  // step_time_s), and the steady-state speed: the median step time and the tokens per second of
  // the steps after the first `warmup_steps` (allocation, caches; 0 when the run is too short).
  std::vector<double> step_seconds;
  int64_t warmup_steps = 0;
  double median_step_seconds = 0;
  double steady_tokens_per_second = 0;
  std::string adapter_dir;
};
// Steps left out of the steady-state speed: two, or fewer in a run of three steps or less.
int64_t speed_warmup_steps(int64_t steps);

class Trainer {
 public:
  // `model` is the PeftModel's base model (the module whose forward runs); its task decides the
  // loss.
  Trainer(std::shared_ptr<models::PretrainedModel> model, std::shared_ptr<PeftModel> peft,
          TrainingArguments args, std::vector<Example> train_data,
          std::vector<Example> eval_data = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Mean loss over the eval data (token-weighted for causal LMs), in eval mode without gradients.
  double evaluate();
  // Restores a checkpoint-<step> folder written by this trainer: adapter weights, optimizer,
  // schedule position, RNG state, data position and loss history. Training then continues exactly
  // as if never interrupted.
  void resume_from_checkpoint(const std::string& dir);
  TrainResult train();

  int64_t total_steps() const;
  Optimizer& optimizer();
  // Called after every update with its 1-based number; returning true stops training there (as an
  // interruption would; nothing is saved beyond the checkpoints already written).
  std::function<bool(int64_t step)> should_stop;
  // Progress and messages (default std::cout; live line only when it is a terminal).
  std::ostream* out = nullptr;
  bool quiet = false;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace peft::train
