#include "peft/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <locale>
#include <sstream>

#include "peft/error.h"

namespace peft::train {
namespace {

constexpr int kBarWidth = 20;

std::string bar(int64_t step, int64_t total) {
  const double frac = std::clamp(static_cast<double>(step) / static_cast<double>(total), 0.0, 1.0);
  const int filled = static_cast<int>(frac * kBarWidth);
  std::string b = "[";
  if (filled >= kBarWidth) {
    b.append(kBarWidth, '=');
  } else if (step <= 0) {
    b.append(kBarWidth, ' ');
  } else {
    b.append(static_cast<size_t>(filled), '=');
    b += '>';
    b.append(static_cast<size_t>(kBarWidth - filled - 1), ' ');
  }
  return b + "]";
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds >= 1e15) return "?";
  const long long s = std::llround(seconds);
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string format_progress_line(const ProgressUpdate& u) {
  std::ostringstream os;
  os.imbue(
      std::locale::classic());  // "1234", never "1,234" or "2,3412", whatever the global locale
  os << "step " << u.step;
  if (u.total_steps > 0) os << "/" << u.total_steps << " " << bar(u.step, u.total_steps);
  os.setf(std::ios::fixed, std::ios::floatfield);
  os.precision(4);
  os << " loss " << u.loss;
  os.setf(std::ios::scientific, std::ios::floatfield);
  os.precision(2);
  os << " lr " << u.lr;
  if (u.grad_norm) {
    os.setf(std::ios::fixed, std::ios::floatfield);
    os.precision(3);
    os << " gnorm " << *u.grad_norm;
  }
  if (std::isfinite(u.tokens_per_second) && u.tokens_per_second >= 0) {
    os.setf(std::ios::fixed, std::ios::floatfield);
    os.precision(0);
    os << " " << u.tokens_per_second << " tok/s";
  }
  if (u.total_steps > 0) {
    const double eta = u.step > 0 ? std::max(0.0, u.elapsed_seconds / static_cast<double>(u.step) *
                                                      static_cast<double>(u.total_steps - u.step))
                                  : std::nan("");
    os << " ETA " << format_duration(eta);
  }
  os << " epoch " << u.epoch_index + 1;
  return os.str();
}

ProgressReporter::ProgressReporter(std::ostream& out, bool live, int64_t every)
    : out_(out), live_(live), every_(every) {
  PEFT_CHECK(
      every >= 1, Error, "progress",
      "every must be at least 1: got " << every << "; expected the number of steps between lines");
}

ProgressReporter::~ProgressReporter() {
  try {
    finish();
  } catch (...) {  // a destructor must not throw; a failing stream has nothing more to show anyway
  }
}

bool ProgressReporter::stdout_is_terminal() { return ::isatty(::fileno(stdout)) == 1; }

void ProgressReporter::clear_live_line() {
  if (live_len_ == 0) return;
  out_ << '\r' << std::string(live_len_, ' ') << '\r';
  live_len_ = 0;
}

void ProgressReporter::update(const ProgressUpdate& u) {
  const std::string line = format_progress_line(u);
  const bool first = !seen_any_;
  seen_any_ = true;
  if (live_) {
    // Spaces overwrite what a longer previous line left behind (the terminal keeps old characters).
    const size_t pad = live_len_ > line.size() ? live_len_ - line.size() : 0;
    out_ << '\r' << line << std::string(pad, ' ') << std::flush;
    live_len_ = line.size() + pad;
    return;
  }
  if (first || u.step % every_ == 0 || (u.total_steps > 0 && u.step == u.total_steps)) {
    out_ << line << '\n' << std::flush;
    pending_line_.clear();
  } else {
    pending_line_ = line;
  }
}

void ProgressReporter::message(const std::string& line) {
  clear_live_line();  // the next update() starts a fresh live line below the message
  out_ << line << '\n' << std::flush;
}

void ProgressReporter::finish() {
  if (live_) {
    if (live_len_ > 0) out_ << '\n' << std::flush;
    live_len_ = 0;
    return;
  }
  if (!pending_line_.empty()) {
    out_ << pending_line_ << '\n' << std::flush;
    pending_line_.clear();
  }
}

}  // namespace peft::train
