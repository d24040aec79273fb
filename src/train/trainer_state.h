// Private: the Trainer's state, shared by the loop (trainer.cpp) and checkpointing
// (trainer_checkpoint.cpp).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/trainer.h"

namespace peft::train {

struct Trainer::State {
  std::shared_ptr<models::PretrainedModel> model;
  std::shared_ptr<PeftModel> peft;
  TrainingArguments args;
  std::vector<Example> train;
  std::vector<Example> eval;
  std::unique_ptr<Optimizer> optimizer;
  LrSchedule schedule;
  c10::Device device =
      c10::Device(c10::kCPU);  // where the model's parameters live (inputs go there)

  // Position: `global_step` updates done; the next micro-batch is `cursor` of epoch `epoch`.
  int64_t global_step = 0;
  int64_t epoch = 0;
  int64_t cursor = 0;
  std::vector<int64_t> order;  // example order of `epoch`
  int64_t tokens_seen = 0;
  // One JSON object per logged event, as written to the JSONL log ({"step","loss","lr",...} /
  // {"step","eval_loss"}).
  std::vector<nlohmann::json> log_history;

  int64_t micro_batches_per_epoch() const;
  std::string log_path() const;
  // Starts the history (kept when resuming); the log file is untouched until publish_log.
  void start_log(bool keep_history);
  void append_log(nlohmann::json record);
  // Replaces the JSONL log with the whole history through the atomic write path, so the file is
  // always the previous complete log or the new one (never truncated by a run that fails early).
  void publish_log() const;
  void save_checkpoint();
};

}  // namespace peft::train
