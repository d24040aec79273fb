// Training progress display: a live line rewritten in place on a terminal, one line per `every`
// steps otherwise. The counterpart of transformers' Trainer progress bar (tqdm) and its
// logging_steps output.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

namespace peft::train {

struct ProgressUpdate {
  int64_t step;                     // optimizer steps done so far (1-based after the first step)
  int64_t total_steps;              // planned steps; <= 0 when unknown (no bar, no ETA)
  double loss;                      // training loss of this step
  double lr;                        // learning rate used for this step
  double tokens_per_second;         // throughput; omitted from the line when not finite or negative
  double elapsed_seconds;           // wall time since training started (the ETA extrapolates it)
  std::optional<double> grad_norm;  // gradient norm before clipping, when computed
  int64_t epoch_index;              // 0-based epoch; shown 1-based as "epoch 1"
};

// Formats one update: "step 12/300 [==>                 ] loss 2.3412 lr 2.00e-04 gnorm 0.532 1234
// tok/s ETA 1m23s epoch 1" (gnorm only when present). ETA = elapsed / step * (total - step).
// Locale-independent.
std::string format_progress_line(const ProgressUpdate& u);

// Shows training progress. Live mode (stdout is a terminal): one line rewritten in place with '\r'
// and padded to clear leftovers. Plain mode: one line per update, every `every` steps plus the
// first update and the last step (step == total_steps), same fields, no '\r'.
class ProgressReporter {
 public:
  // Throws peft::Error when every < 1.
  ProgressReporter(std::ostream& out, bool live, int64_t every = 10);
  ~ProgressReporter();  // finish(), swallowing stream errors
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  static bool stdout_is_terminal();  // isatty(fileno(stdout))

  void update(const ProgressUpdate& u);
  // A message line (e.g. "eval loss 2.31 at step 100") that does not corrupt the live line: clears
  // it, prints, and the next update redraws.
  void message(const std::string& line);
  // Ends the live line with '\n'. In plain mode prints the latest update if it was not printed yet
  // (a run that stopped before total_steps). Idempotent.
  void finish();

 private:
  void clear_live_line();

  std::ostream& out_;
  bool live_;
  int64_t every_;
  bool seen_any_ = false;
  size_t live_len_ = 0;       // characters of the live line now on screen; 0 when none
  std::string pending_line_;  // plain mode: latest update not printed yet
};

// "45s", "1m23s", "2h05m" (seconds rounded to the nearest whole second); "?" when negative, not
// finite or absurd (>= 1e15 s).
std::string format_duration(double seconds);

}  // namespace peft::train
