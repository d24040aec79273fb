// PeftModel's file side: PEFT's checkpoint keys for an adapter, save_pretrained, load_adapter,
// from_pretrained. PEFT counterparts: get_peft_model_state_dict / set_peft_model_state_dict
// (utils/save_and_load.py), PeftModel.save_pretrained / load_adapter / from_pretrained.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <set>
#include <sstream>

#include "../strings.h"
#include "convert_init.h"
#include "internal.h"
#include "peft/error.h"
#include "peft/io/adapter_io.h"
#include "peft/io/atomic_write.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/trainable_tokens.h"
#include "peft/peft_model.h"

namespace fs = std::filesystem;

namespace peft {
namespace {

// Adapter-free PEFT keys (without "base_model.model.") -> the model tensor they address, for
// `adapter`. `required` marks adapter weights (their absence in a file is warned about, as PEFT
// does).
struct KeyTarget {
  at::Tensor tensor;
  bool required;
};

std::map<std::string, KeyTarget> adapter_key_map(torch::nn::Module& model, const LoraConfig& config,
                                                 const std::string& adapter) {
  std::map<std::string, KeyTarget> out;
  auto layers = nn::lora_layers(model);
  std::set<std::string>
      wrapped;  // layers with a LoRA for any adapter: PEFT names their bias base_layer.bias
  for (auto& [name, layer] : layers) {
    if (!layer->adapter_names().empty()) wrapped.insert(name);
  }
  if (config.bias == Bias::kAll) {
    // PEFT saves every bias of the model with bias="all".
    std::set<std::string> skip;
    for (auto& [name, layer] : layers) {
      if (layer->has_bias()) skip.insert(name.empty() ? "bias" : name + ".bias");
    }
    for (auto& item : model.named_parameters()) {
      const std::string& n = item.key();
      if (n.find("lora_") != std::string::npos || n.find("modules_to_save.") != std::string::npos)
        continue;
      if (!(n == "bias" || detail::ends_with(n, ".bias"))) continue;
      std::string key = n;
      std::string owner = n == "bias" ? "" : n.substr(0, n.size() - 5);
      if (skip.count(n) && wrapped.count(owner))
        key = (owner.empty() ? "" : owner + ".") + "base_layer.bias";
      out[key] = {item.value(), false};
    }
  }
  // bias="lora_only": PEFT looks for "<layer>.bias" instead of "<layer>.base_layer.bias" when
  // saving, so the biases never reach the file (upstream behaviour, kept so files match).
  for (auto& [name, layer] : layers) {
    const std::string prefix = name.empty() ? "" : name + ".";
    if (layer->has_adapter(adapter)) {
      for (auto& [suffix, t] : layer->adapter_tensors(adapter)) out[prefix + suffix] = {t, true};
    }
    if (const auto* copies = layer->modules_to_save()) {
      for (auto& [suffix, t] : copies->tensors(adapter)) out[prefix + suffix] = {t, true};
    }
    // Trainable tokens: <emb>.token_adapter.trainable_tokens_delta; a tied lm_head shares the
    // embedding's delta and is not saved again (PEFT).
    const auto* tokens = layer->trainable_tokens();
    if (tokens && tokens->has(adapter) && !tokens->tied(adapter)) {
      out[prefix + "token_adapter.trainable_tokens_delta"] = {tokens->delta(adapter), true};
    }
  }
  return out;
}

// PEFT writes a model card (README.md) at the root of the save directory; it is not needed for
// loading.
void write_model_card(const std::string& dir, const LoraConfig& c) {
  const fs::path p = fs::path(dir) / "README.md";
  if (fs::exists(p)) return;
  std::ostringstream f;
  f << "---\nlibrary_name: peft\n";
  if (c.base_model_name_or_path && !c.base_model_name_or_path->empty())
    f << "base_model: " << *c.base_model_name_or_path << "\n";
  f << "tags:\n- lora\n- peft.cpp\n---\n\n# LoRA adapter\n\nWritten by peft.cpp in Hugging Face "
       "PEFT's format "
       "(adapter_config.json + adapter_model.safetensors); load it with "
       "`PeftModel.from_pretrained` in Python or "
       "`peft::PeftModel::from_pretrained` in C++.\n";
  io::write_file_atomically(p.string(), f.str(), "save_pretrained");
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> PeftModel::get_peft_model_state_dict(
    const std::string& adapter) const {
  const LoraConfig& config = peft_config(adapter);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [key, target] : adapter_key_map(*model_, config, adapter)) {
    out.emplace_back(io::kCheckpointPrefix + key, target.tensor.detach());
  }
  return out;
}

LoadResult PeftModel::set_peft_model_state_dict(const std::map<std::string, at::Tensor>& state_dict,
                                                const std::string& adapter) {
  const LoraConfig& config = peft_config(adapter);
  auto targets = adapter_key_map(*model_, config, adapter);
  LoadResult result;
  std::vector<std::pair<at::Tensor, at::Tensor>> assignments;
  std::vector<std::string> mismatches;
  std::set<std::string> seen;
  for (const auto& [file_key, value] : state_dict) {
    std::string key = io::strip_checkpoint_prefix(file_key);
    // PEFT files written by older versions may carry the DoRA-less ".weight" suffix forms; keys map
    // 1:1 here.
    auto it = targets.find(key);
    if (it == targets.end()) {
      result.unexpected_keys.push_back(file_key);
      continue;
    }
    seen.insert(key);
    if (it->second.tensor.sizes() != value.sizes()) {
      mismatches.push_back("\"" + file_key + "\": shape " + detail::shape_string(value.sizes()) +
                           " in the file but the model has " +
                           detail::shape_string(it->second.tensor.sizes()));
      continue;
    }
    assignments.emplace_back(it->second.tensor, value);
  }
  if (!mismatches.empty()) {
    std::string msg =
        std::to_string(mismatches.size()) + " tensor(s) do not fit adapter \"" + adapter + "\": ";
    msg += detail::join(mismatches, "; ");
    throw ShapeMismatchError("load_adapter",
                             msg +
                                 " (hint: adapter trained for another base model, or with a "
                                 "different r / rank_pattern?)");
  }
  {
    torch::NoGradGuard no_grad;
    for (auto& [dst, src] : assignments) dst.copy_(src.to(dst.device(), dst.scalar_type()));
  }
  for (const auto& [key, target] : targets) {
    if (target.required && !seen.count(key))
      result.missing_keys.push_back(io::kCheckpointPrefix + key);
  }
  if (!result.missing_keys.empty()) {
    const std::string list = detail::join(result.missing_keys, ", ", "'");
    warn("load_adapter",
         "Found missing adapter keys while loading the checkpoint: [" + list + "].");
  }
  if (!result.unexpected_keys.empty()) {
    // Divergence from PEFT: PEFT ignores unexpected keys silently; a skipped tensor is worth a
    // warning.
    const std::string list = detail::join(result.unexpected_keys, ", ", "'");
    warn("load_adapter",
         "Ignored checkpoint keys that match nothing in the model: [" + list + "].");
  }
  return result;
}

void PeftModel::save_pretrained(const std::string& dir,
                                std::optional<std::vector<std::string>> selected,
                                const std::string& path_initial_model_for_weight_conversion) const {
  check_not_unloaded("save_pretrained");
  std::vector<std::string> adapters = selected ? *selected : adapter_order_;
  for (const auto& a : adapters) {
    PEFT_CHECK(configs_.count(a), AdapterNotFoundError, "save_pretrained",
               "Cannot save adapter \"" << a << "\": it does not exist");
  }
  for (const auto& a : adapters) {
    const std::string out = io::adapter_subdir(dir, a);
    fs::create_directories(out);
    LoraConfig c = configs_.at(a);
    c.inference_mode = true;
    if (!c.base_model_name_or_path && !info().name_or_path().empty())
      c.base_model_name_or_path = info().name_or_path();
    if (!c.task_type) {
      c.auto_mapping = RawJson{"{\"base_model_class\":\"" + info().class_name() +
                               "\",\"parent_library\":\"" + info().parent_library() + "\"}"};
    }
    c.peft_version = io::kPeftVersion;
    write_model_card(dir, c);
    auto state = get_peft_model_state_dict(a);
    if (!path_initial_model_for_weight_conversion.empty()) {
      detail::convert_mutated_init_to_lora(c, state, path_initial_model_for_weight_conversion);
    }
    io::save_safetensors((fs::path(out) / io::kAdapterWeightsName).string(), state,
                         {{"format", "pt"}});
    save_lora_config(c, (fs::path(out) / io::kAdapterConfigName).string());
  }
}

LoadResult PeftModel::load_adapter(const std::string& dir, const std::string& adapter_name,
                                   bool is_trainable) {
  check_not_unloaded("load_adapter");
  io::check_adapter_dir(dir);
  if (!configs_.count(adapter_name)) {
    LoraConfig c = load_lora_config((fs::path(dir) / io::kAdapterConfigName).string());
    detail::warn_if_mutating_init(c, dir);
    c.inference_mode = !is_trainable;
    add_adapter(adapter_name, std::move(c));
  }
  auto tensors = io::load_safetensors((fs::path(dir) / io::kAdapterWeightsName).string());
  LoadResult r = set_peft_model_state_dict(tensors, adapter_name);
  configs_.at(adapter_name).inference_mode = !is_trainable;
  refresh_trainable();
  if (!is_trainable) model_->eval();
  return r;
}

std::shared_ptr<PeftModel> PeftModel::from_pretrained(std::shared_ptr<torch::nn::Module> model,
                                                      const std::string& dir,
                                                      const std::string& adapter_name,
                                                      bool is_trainable) {
  io::check_adapter_dir(dir);
  LoraConfig c = load_lora_config((fs::path(dir) / io::kAdapterConfigName).string());
  detail::warn_if_mutating_init(c, dir);
  c.inference_mode = !is_trainable;
  auto pm = std::make_shared<PeftModel>(std::move(model), std::move(c), adapter_name);
  pm->load_adapter(dir, adapter_name, is_trainable);
  return pm;
}

}  // namespace peft
