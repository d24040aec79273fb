#include "peft/error.h"

#include <iostream>
#include <mutex>

namespace peft {
namespace {
std::mutex& sink_mutex() {
  static std::mutex m;
  return m;
}
WarningSink& current_sink() {
  static WarningSink sink;
  return sink;
}
}  // namespace

WarningSink set_warning_sink(WarningSink sink) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  WarningSink previous = std::move(current_sink());
  current_sink() = std::move(sink);
  return previous;
}

void warn(const std::string& component, const std::string& message) {
  WarningSink sink;
  {
    std::lock_guard<std::mutex> lock(sink_mutex());
    sink = current_sink();
  }
  if (sink) {
    sink(component, message);
  } else {
    std::cerr << "peft warning: [" << component << "] " << message << "\n";
  }
}

ScopedWarningCapture::ScopedWarningCapture() {
  previous_ = set_warning_sink([this](const std::string& component, const std::string& message) {
    messages_.push_back("[" + component + "] " + message);
  });
}

ScopedWarningCapture::~ScopedWarningCapture() { set_warning_sink(std::move(previous_)); }

bool ScopedWarningCapture::contains(const std::string& needle) const {
  for (const auto& m : messages_) {
    if (m.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace peft
