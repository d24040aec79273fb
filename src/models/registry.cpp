// The model registry keyed by config.json's model_type, and checkpoint loading.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "families.h"
#include "peft/error.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/io/json.h"
#include "peft/models/model.h"
#include "quantize_model.h"
#include "size_check.h"

namespace peft::models {
namespace {

using Factory = std::shared_ptr<PretrainedModel> (*)(const nlohmann::json&);

const std::map<std::string, Factory>& registry() {
  static const std::map<std::string, Factory> r{
      {"llama", detail::make_llama},   {"mistral", detail::make_llama},
      {"mixtral", detail::make_llama}, {"qwen2", detail::make_llama},
      {"qwen3", detail::make_llama},   {"qwen3_moe", detail::make_llama},
      {"gpt2", detail::make_gpt2},     {"bert", detail::make_bert},
      {"roberta", detail::make_bert},
  };
  return r;
}

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& [k, v] : registry()) out.push_back(k);
  return out;
}

namespace {

// The parsed config.json and the factory of its model_type; a bad config.json is a configuration
// error (the CLI's exit 2).
std::pair<nlohmann::json, Factory> parse_config(const std::string& config_json_text) {
  nlohmann::json config =
      io::parse_json(config_json_text, "config.json", "config.json", io::JsonRole::kConfig);
  PEFT_CHECK(
      config.is_object() && config.contains("model_type") && config["model_type"].is_string(),
      ConfigError, "config.json",
      "no \"model_type\" string (hint: is this a Hugging Face config.json?)");
  const std::string type = config["model_type"].get<std::string>();
  auto it = registry().find(type);
  if (it == registry().end()) {
    std::string supported;
    for (const auto& t : supported_model_types()) {
      if (!supported.empty()) supported += ", ";
      supported += t;
    }
    throw ConfigError("load_pretrained", "model_type \"" + type +
                                             "\" is not supported; expected one of " + supported +
                                             " (hint: config.json's \"model_type\")");
  }
  return {std::move(config), it->second};
}

}  // namespace

std::shared_ptr<PretrainedModel> from_config(const std::string& config_json_text) {
  const auto [config, factory] = parse_config(config_json_text);
  detail::check_config_size(config);
  auto model = factory(config);
  model->set_config_json(config_json_text);
  return model;
}

std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir,
                                                 const LoadOptions& options) {
  const std::string config_text = io::read_config_json(dir);
  const auto [config, factory] = parse_config(config_text);
  // The weights are mapped, not read, so their sizes are known before the model is built.
  auto tensors = io::load_checkpoint_tensors(dir);
  uint64_t held = 0;
  for (const auto& [name, t] : tensors) held += static_cast<uint64_t>(t.numel());
  detail::check_config_size(config, held);
  auto model = factory(config);
  model->set_config_json(config_text);
  model->set_name_or_path(dir);
  const auto dtype = options.dtype.value_or(at::kFloat);
  model->to(options.device, dtype);
  model->convert_checkpoint(tensors);
  // A checkpoint saved by bitsandbytes keeps its own quantization; --quantize applies to float
  // checkpoints.
  auto quantized = detail::take_bnb_weights(*model, tensors,
                                            options.quantize && options.quantize->compute_dtype
                                                ? *options.quantize->compute_dtype
                                                : dtype,
                                            dir);
  // A GPTQ checkpoint's Linear layers stay GPTQ-quantized (compute in the model's dtype).
  auto gptq = detail::take_gptq_weights(*model, tensors, dtype, dir);
  quantized.insert(quantized.end(), gptq.begin(), gptq.end());
  io::load_state_into(*model, tensors, dir, model->tied_weights());
  detail::install_quantized_weights(*model, quantized);
  if (options.quantize) detail::quantize_model(*model, *options.quantize);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  return model;
}

}  // namespace peft::models
