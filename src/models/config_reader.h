// Typed access to config.json fields with errors that name the field (private to the model zoo).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>

#include "peft/error.h"

namespace peft::models::detail {

// A value for an error message: its JSON, cut after 200 characters.
inline std::string short_dump(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 200) s = s.substr(0, 200) + "... (" + std::to_string(s.size()) + " characters)";
  return s;
}

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& config, std::string model_type)
      : config_(config), model_type_(std::move(model_type)) {}

  const nlohmann::json& json() const { return config_; }
  bool has(const std::string& key) const {
    return config_.contains(key) && !config_[key].is_null();
  }

  template <class T>
  T get(const std::string& key) const {
    PEFT_CHECK(has(key), ConfigError, "config.json",
               model_type_ << " config has no \"" << key << "\" (hint: is config.json complete?)");
    return convert<T>(key, config_[key]);
  }
  template <class T>
  T get(const std::string& key, T fallback) const {
    return has(key) ? convert<T>(key, config_[key]) : fallback;
  }
  // An integer field that must be > 0.
  int64_t positive(const std::string& key) const {
    const auto v = get<int64_t>(key);
    PEFT_CHECK(v > 0, ConfigError, "config.json",
               model_type_ << " config field \"" << key << "\" must be positive; got " << v);
    return v;
  }
  // A probability field (dropout): a number in [0, 1].
  double probability(const std::string& key, double fallback) const {
    const double v = get<double>(key, fallback);
    PEFT_CHECK(v >= 0.0 && v <= 1.0, ConfigError, "config.json",
               model_type_ << " config field \"" << key
                           << "\" must be a probability in [0, 1]; got " << v);
    return v;
  }
  template <class T>
  std::optional<T> optional(const std::string& key) const {
    return has(key) ? std::optional<T>(convert<T>(key, config_[key])) : std::nullopt;
  }

 private:
  template <class T>
  T convert(const std::string& key, const nlohmann::json& v) const {
    // nlohmann converts 128.5 to 128 without a word: an integer field must hold an integer.
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      PEFT_CHECK(v.is_number_integer(), ConfigError, "config.json",
                 model_type_ << " config field \"" << key << "\" is " << short_dump(v)
                             << "; expected an integer");
    }
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError("config.json", model_type_ + " config field \"" + key +
                                           "\" has the wrong type: " + short_dump(v));
    }
  }
  const nlohmann::json& config_;
  std::string model_type_;
};

}  // namespace peft::models::detail
