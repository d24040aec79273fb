// Intruder-dimension reduction (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
// Equivalence"): a new adapter whose update keeps only `mitigation_lambda` of each intruder
// component of W + dW. PEFT counterpart: peft.tuners.lora.intruders.reduce_intruder_dimension.
#pragma once

#include <functional>
#include <string>

namespace peft {

class PeftModel;

// Prints `message` and a newline to stdout (PEFT's default logging_sink, print).
void print_to_stdout(const std::string& message);

struct IntruderOptions {
  // The trained adapter to post-process (PEFT default "default").
  std::string old_adapter_name = "default";
  // Created with the old adapter's config, then activated (PEFT default "intruder_reduced").
  std::string new_adapter_name = "intruder_reduced";
  // Only the top_k singular directions of W + dW (largest first) are examined (PEFT default 10).
  int top_k = 10;
  // A direction is an intruder when its largest |cosine| with the base weight's left singular
  // vectors is below this (PEFT default 0.5).
  double threshold_epsilon = 0.5;
  // Share of each intruder component kept: S becomes lambda x S (PEFT default 0.75).
  double mitigation_lambda = 0.75;
  // Receives one line per layer ("<name>: No intruders" / "<name>: Intruders: <n>") and a last
  // line "Enabling new adapter <name>". Default: stdout (PEFT: print); empty: silent (PEFT: None).
  std::function<void(const std::string&)> logging_sink = print_to_stdout;
};

// Adds options.new_adapter_name (same config as the old adapter), fills it per LoRA layer with the
// rank-r factorisation of ((W + dW with intruders scaled by lambda) - W) / scaling, and makes it
// the active adapter. Layers without intruders get an exact copy of the old A and B. Throws
// AdapterNotFoundError for an unknown old adapter, ConfigError when the new name exists or
// top_k < 0.
void reduce_intruder_dimension(PeftModel& model, const IntruderOptions& options = {});

}  // namespace peft
