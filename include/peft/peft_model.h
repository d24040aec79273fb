// PeftModel: inject LoRA into a model built from peft::nn layers, manage adapters (add / set /
// delete / disable), merge / unmerge / unload, count parameters, and save / load PEFT adapter
// folders. PEFT counterparts: get_peft_model (mapping_func.py), PeftModel (peft_model.py),
// LoraModel / BaseTuner.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "peft/config.h"
#include "peft/model_info.h"

namespace peft {
namespace nn {
class LoraLayerImpl;
}  // namespace nn
struct ModuleInfo;

// Result of loading adapter weights.
struct LoadResult {
  std::vector<std::string> missing_keys;  // adapter keys the file lacked (PEFT warns about these)
  std::vector<std::string> unexpected_keys;  // file keys that map to nothing in the model
};

class PeftModel;

// Scoped disable_adapter(): inside, every layer computes the base output; on exit the previous
// state returns.
class [[nodiscard]] DisabledAdapterGuard {
 public:
  explicit DisabledAdapterGuard(PeftModel& model);
  ~DisabledAdapterGuard();
  DisabledAdapterGuard(const DisabledAdapterGuard&) = delete;
  DisabledAdapterGuard& operator=(const DisabledAdapterGuard&) = delete;

 private:
  PeftModel& model_;
  bool was_enabled_;
};

class PeftModel {
 public:
  // get_peft_model: injects `config` as `adapter_name` into `model` in place (validates the config
  // first). The model must be owned by a shared_ptr (named_modules needs it).
  PeftModel(std::shared_ptr<torch::nn::Module> model, LoraConfig config,
            const std::string& adapter_name = "default", bool autocast_adapter_dtype = true);

  torch::nn::Module& base_model() { return *model_; }
  std::shared_ptr<torch::nn::Module> base_model_ptr() const { return model_; }
  template <class T>
  std::shared_ptr<T> base_model_as() const {
    return std::dynamic_pointer_cast<T>(model_);
  }

  // ---- adapters ----
  const LoraConfig& peft_config(const std::string& adapter) const;
  // Replaces the stored config of an existing adapter without re-injecting (EVA rewrites r /
  // target_modules / rank_pattern / alpha_pattern after redistributing ranks).
  void update_peft_config(const std::string& adapter, LoraConfig config);
  const std::vector<std::string>& adapter_names() const {
    return adapter_order_;
  }                                           // creation order
  const std::string& active_adapter() const;  // first active adapter
  const std::vector<std::string>& active_adapters() const { return active_; }
  // Adds and injects a new adapter; it is NOT activated (PEFT). Rolled back on error.
  void add_adapter(const std::string& adapter_name, LoraConfig config,
                   bool autocast_adapter_dtype = true);
  // Makes one adapter active (and trainable unless inference_mode).
  void set_adapter(const std::string& adapter_name, bool inference_mode = false);
  // Several active adapters at once: outputs are summed (PEFT's tuner-level set_adapter(list)).
  void set_adapters(const std::vector<std::string>& adapter_names, bool inference_mode = false);
  void delete_adapter(const std::string& adapter_name);
  DisabledAdapterGuard disable_adapter() { return DisabledAdapterGuard(*this); }
  bool adapters_enabled() const { return enabled_; }
  // Full names of the modules that carry `adapter` (LoRA layers), in module order.
  std::vector<std::string> targeted_module_names(const std::string& adapter) const;
  // Full names of the modules holding a modules_to_save copy for `adapter`.
  std::vector<std::string> modules_to_save_names(const std::string& adapter) const;

  // ---- merging ----
  void merge_adapter(std::optional<std::vector<std::string>> adapter_names = std::nullopt,
                     bool safe_merge = false);
  void unmerge_adapter();
  // Merges (active or named adapters), makes modules_to_save copies permanent, removes every
  // adapter and returns the plain model. The PeftModel holds no adapters afterwards. Quantized
  // bases (QLoRA): kRequantize merges into the dequantized weight and quantizes the result again
  // (as PEFT does with bitsandbytes layers; rounding changes the numbers, and a warning says so);
  // kDequantize keeps the merged weight in float (the quantized layers become float layers).
  enum class QuantizedMerge { kRequantize, kDequantize };
  std::shared_ptr<torch::nn::Module> merge_and_unload(
      bool safe_merge = false, std::optional<std::vector<std::string>> adapter_names = std::nullopt,
      QuantizedMerge quantized = QuantizedMerge::kRequantize);
  // Removes every adapter without merging (modules_to_save copies of the active adapter still
  // replace the originals, as in PEFT).
  std::shared_ptr<torch::nn::Module> unload();

  // ---- parameters ----
  // {trainable, all} over the model's de-duplicated parameters (PEFT get_nb_trainable_parameters).
  std::pair<int64_t, int64_t> get_nb_trainable_parameters() const;
  // "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330"
  std::string trainable_parameters_line() const;
  void print_trainable_parameters() const;  // to stdout

  // ---- files (PEFT format) ----
  // The adapter's tensors under PEFT's checkpoint keys ("base_model.model.<path>.lora_A.weight",
  // ...).
  std::vector<std::pair<std::string, at::Tensor>> get_peft_model_state_dict(
      const std::string& adapter) const;
  // Copies tensors (keys with or without "base_model.model.") into `adapter`. Every shape is
  // checked before anything is written: mismatches throw ShapeMismatchError naming each tensor.
  // Missing adapter keys warn.
  LoadResult set_peft_model_state_dict(const std::map<std::string, at::Tensor>& state_dict,
                                       const std::string& adapter);
  // adapter_config.json + adapter_model.safetensors; "default" in `dir`, others in `dir/<name>`.
  // path_initial_model_for_weight_conversion (PEFT, for PiSSA / OLoRA / CorDA / LoRA-GA adapters):
  // the folder of the initial adapter saved right after get_peft_model; the adapter is then written
  // as a plain rank-2r LoRA for the ORIGINAL base weights (A' = [A; A0], B' = [B, -B0], r and alpha
  // doubled).
  void save_pretrained(const std::string& dir,
                       std::optional<std::vector<std::string>> selected_adapters = std::nullopt,
                       const std::string& path_initial_model_for_weight_conversion = "") const;
  // Loads a PEFT adapter folder as `adapter_name` (added if new). Frozen unless is_trainable.
  LoadResult load_adapter(const std::string& dir, const std::string& adapter_name,
                          bool is_trainable = false);
  static std::shared_ptr<PeftModel> from_pretrained(std::shared_ptr<torch::nn::Module> model,
                                                    const std::string& dir,
                                                    const std::string& adapter_name = "default",
                                                    bool is_trainable = false);

 private:
  friend class DisabledAdapterGuard;
  // Validates `config` and injects it as `adapter_name`, rolling back every layer touched when a
  // step fails (src/peft_model/inject.cpp).
  void inject(const std::string& adapter_name, LoraConfig& config);
  // The adapter-ready layers that get a modules_to_save copy (src/peft_model/modules_to_save.cpp).
  std::vector<std::shared_ptr<nn::LoraLayerImpl>> find_modules_to_save(
      const std::string& adapter_name, const LoraConfig& config,
      const std::vector<ModuleInfo>& modules);
  // modules_to_save copies and trainable tokens, with ensure_weight_tying
  // (src/peft_model/modules_to_save.cpp, trainable_tokens.cpp).
  void add_trainable_copies(const std::string& adapter_name, const LoraConfig& config,
                            std::vector<std::shared_ptr<nn::LoraLayerImpl>> copies,
                            std::vector<std::shared_ptr<nn::LoraLayerImpl>>& touched);
  void add_trainable_tokens(const std::string& adapter_name, const LoraConfig& config,
                            std::vector<std::shared_ptr<nn::LoraLayerImpl>>& touched);
  // target_parameters (src/peft_model/target_parameters.cpp): LoRA on the matched parameters of
  // ParamModules; returns the number of parameters targeted.
  size_t add_parameter_targets(const std::string& adapter_name, const LoraConfig& config,
                               std::vector<std::shared_ptr<nn::LoraLayerImpl>>& touched);
  // target_modules on tied embeddings (the docs' table; src/peft_model/weight_tying.cpp): returns
  // the full name of the output head whose LoRA is to be tied to the input embedding's and the
  // embedding's full name (after making sure the embedding is targeted and the head is not), or two
  // empty strings.
  std::pair<std::string, std::string> plan_lora_weight_tying(
      const LoraConfig& config, std::vector<std::string>& targeted) const;
  void refresh_trainable();
  void cast_adapter_dtype(const std::string& adapter_name);
  void check_not_unloaded(const char* what) const;
  void check_merge_allowed() const;
  const PeftModelInfo& info() const;

  std::shared_ptr<torch::nn::Module> model_;
  std::map<std::string, LoraConfig> configs_;
  std::vector<std::string> adapter_order_;
  std::vector<std::string> active_;
  bool enabled_ = true;
  bool unloaded_ = false;
};

// The adapter-ready layers that `config` targets in `model` (PEFT's matching rules: target_modules,
// defaults, all-linear, exclude_modules, layers_to_transform), by full name in module order.
// Injection uses it, and so do the data-driven inits' preprocessing steps (CorDA, LoRA-GA) that run
// before get_peft_model.
std::vector<std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>> find_target_layers(
    torch::nn::Module& model, const LoraConfig& config);

// PEFT's get_peft_model(model, config, adapter_name).
std::shared_ptr<PeftModel> get_peft_model(std::shared_ptr<torch::nn::Module> model,
                                          LoraConfig config,
                                          const std::string& adapter_name = "default");

}  // namespace peft
