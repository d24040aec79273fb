// Error hierarchy and warning sink of peft.cpp. PEFT raises ValueError/TypeError/KeyError; here
// every failure is a typed peft::Error whose message reads "[component] what is wrong: observed;
// expected. hint".
#pragma once

#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace peft {

class Error : public std::runtime_error {
 public:
  Error(const std::string& component, const std::string& message)
      : std::runtime_error("[" + component + "] " + message), component_(component) {}
  const std::string& component() const noexcept { return component_; }

 private:
  std::string component_;
};

// A LoraConfig field has an invalid value or an invalid combination (PEFT: ValueError in
// __post_init__).
class ConfigError : public Error {
  using Error::Error;
};
// target_modules / exclude_modules / target_parameters matched nothing (PEFT:
// NoMatchingPeftModuleError).
class NoMatchingModuleError : public Error {
  using Error::Error;
};
// An adapter name that does not exist (PEFT: ValueError "Adapter ... does not exist").
class AdapterNotFoundError : public Error {
  using Error::Error;
};
// A tensor whose shape differs from what the model or file requires.
class ShapeMismatchError : public Error {
  using Error::Error;
};
// A malformed file (safetensors, adapter_config.json, ...).
class FormatError : public Error {
  using Error::Error;
};
// A feature that exists in PEFT but not (yet) here, or that PEFT itself refuses (merging a grouped
// conv...).
class UnsupportedError : public Error {
  using Error::Error;
};

// Warnings go through one replaceable sink (default: stderr, "peft warning: [component] message").
using WarningSink = std::function<void(const std::string& component, const std::string& message)>;
// Installs `sink` and returns the previous one. Passing nullptr restores the default.
WarningSink set_warning_sink(WarningSink sink);
void warn(const std::string& component, const std::string& message);

// Captures warnings for the lifetime of the object (tests, tools that collect warnings).
class ScopedWarningCapture {
 public:
  ScopedWarningCapture();
  ~ScopedWarningCapture();
  ScopedWarningCapture(const ScopedWarningCapture&) = delete;
  ScopedWarningCapture& operator=(const ScopedWarningCapture&) = delete;
  const std::vector<std::string>& messages() const { return messages_; }
  bool contains(const std::string& needle) const;

 private:
  std::vector<std::string> messages_;
  WarningSink previous_;
};

}  // namespace peft

// PEFT_CHECK(cond, ErrorType, component, streamed message) throws ErrorType when cond is false.
#define PEFT_CHECK(cond, ErrorType, component, msg)     \
  do {                                                  \
    if (!(cond)) {                                      \
      std::ostringstream peft_check_os_;                \
      peft_check_os_ << msg;                            \
      throw ErrorType(component, peft_check_os_.str()); \
    }                                                   \
  } while (false)
