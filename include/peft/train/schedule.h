// Learning-rate schedules as transformers' get_scheduler builds them (LambdaLR over the optimizer's
// base lrs): constant, linear and cosine, each with linear warmup.
#pragma once

#include <cstdint>
#include <string>

namespace peft::train {

enum class ScheduleKind { kConstant, kLinear, kCosine };
// "constant" | "linear" | "cosine"; ConfigError listing the accepted spellings otherwise.
ScheduleKind parse_schedule_kind(const std::string& text);
std::string to_string(ScheduleKind kind);

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kLinear;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // num_training_steps (linear / cosine decay to 0 at this step)
  double num_cycles = 0.5;  // cosine: transformers' default (half a cosine wave)

  // The multiplier of the base lr for the update with 0-based index `step` (LambdaLR's
  // lr_lambda(step)): the first update uses factor(0), which is 0 during warmup as in transformers.
  double factor(int64_t step) const;
};

}  // namespace peft::train
