// Typed access to config.json fields with errors that name the field (private to the model zoo).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "peft/error.h"

namespace peft::models::detail {

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
  template <class T>
  std::optional<T> optional(const std::string& key) const {
    return has(key) ? std::optional<T>(convert<T>(key, config_[key])) : std::nullopt;
  }

 private:
  template <class T>
  T convert(const std::string& key, const nlohmann::json& v) const {
    try {
      return v.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError("config.json", model_type_ + " config field \"" + key +
                                           "\" has the wrong type: " + v.dump());
    }
  }
  const nlohmann::json& config_;
  std::string model_type_;
};

}  // namespace peft::models::detail
