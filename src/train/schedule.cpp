// transformers.optimization: get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
// get_cosine_schedule_with_warmup (their lr_lambda functions).
#include "peft/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "peft/error.h"

namespace peft::train {

ScheduleKind parse_schedule_kind(const std::string& text) {
  if (text == "constant") return ScheduleKind::kConstant;
  if (text == "linear") return ScheduleKind::kLinear;
  if (text == "cosine") return ScheduleKind::kCosine;
  throw ConfigError("lr_scheduler",
                    "unknown schedule \"" + text + "\"; expected one of constant, linear, cosine");
}

std::string to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kLinear:
      return "linear";
    case ScheduleKind::kCosine:
      return "cosine";
  }
  return "?";
}

double LrSchedule::factor(int64_t step) const {
  if (step < warmup_steps) {
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  }
  const double done = static_cast<double>(step - warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (kind) {
    case ScheduleKind::kConstant:
      return 1.0;
    case ScheduleKind::kLinear:
      return std::max(0.0, static_cast<double>(total_steps - step) / span);
    case ScheduleKind::kCosine: {
      const double progress = done / span;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress)));
    }
  }
  return 1.0;
}

}  // namespace peft::train
