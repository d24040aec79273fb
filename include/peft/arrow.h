// Arrow: token-wise routing over task-specific LoRA adapters by their SVD prototypes, with optional
// General Knowledge Subtraction (GenKnowSub). PEFT counterparts: create_arrow_model and
// ArrowLoraLinearLayer (tuners/lora/arrow.py), ArrowLinearVariant (tuners/lora/variants.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

// ArrowConfig lives in config.h: it is LoraConfig::arrow_config and round-trips through JSON there.
#include "peft/config.h"
#include "peft/lora/layer.h"

namespace peft {

class PeftModel;

// The router adapter's name (PEFT hard-codes it, and so does its task / general adapter
// bookkeeping).
inline constexpr const char* kArrowRouterName = "arrow_router";
inline constexpr const char* kArrowTaskPrefix = "task_";
inline constexpr const char* kArrowGksPrefix = "gks_";

// PEFT's create_arrow_model: loads the task adapters as task_0, task_1, ... (the first with
// PeftModel::from_pretrained), with use_gks the general adapters as gks_0, ..., checks them
// (add_arrow_router) and adds and activates the "arrow_router" adapter. Paths are local adapter
// folders (adapter_config.json + adapter_model.safetensors). Throws ConfigError (PEFT ValueError)
// for an empty task list, use_gks without general adapters, a folder without adapter_config.json
// and incompatible adapters; UnsupportedError (PEFT TypeError) for adapters on non-Linear layers.
std::shared_ptr<PeftModel> create_arrow_model(
    std::shared_ptr<torch::nn::Module> base_model,
    const std::vector<std::string>& task_specific_adapter_paths, const ArrowConfig& arrow_config,
    const std::vector<std::string>& general_adapter_paths = {});

// The second half of create_arrow_model on a model whose adapters are loaded already:
// config.task_adapter_names (required) and, with use_gks, config.gks_adapter_names name them.
// Checks that they share rank, A/B shapes and target-module short names
// (check_loaded_lora_compatibility_arrow) and sit on Linear-like layers
// (ensure_adapters_target_linear_layers_only), then adds "arrow_router" = LoraConfig{r,
// target_modules = the short names, arrow_config = config}, installs an ArrowForward on each of its
// layers and activates it.
void add_arrow_router(PeftModel& model, ArrowConfig config);

// PEFT's check_loaded_lora_compatibility_arrow: the sorted target-module short names and the agreed
// rank. As in PEFT the rank and A/B shapes compared are those of the last layer (module order)
// holding each adapter.
struct ArrowCompatibility {
  std::vector<std::string> target_modules;
  int r = 0;
};
ArrowCompatibility check_loaded_lora_compatibility_arrow(
    PeftModel& model, const std::vector<std::string>& adapter_names);
// PEFT's ensure_adapters_target_linear_layers_only (Linear, GPT-2 Conv1D, Conv1d); lists every
// offender.
void ensure_adapters_target_linear_layers_only(PeftModel& model,
                                               const std::vector<std::string>& adapter_names);

// The router's forward on one layer (PEFT's ArrowLoraLinearLayer, one per layer). Lazily, on the
// first forward after a change of the layer's adapters: GenKnowSub (use_gks), then one prototype
// per task adapter. Forward may run on several threads; the lazy state is guarded by a mutex.
class ArrowForward : public nn::AdapterForward {
 public:
  explicit ArrowForward(ArrowConfig config);

  // result + sum_e coeff_e(t) * s_e * B_e A_e t for every token row t of x (arrow_forward.cpp).
  at::Tensor forward(const nn::LoraLayerImpl& layer, const std::string& adapter,
                     const at::Tensor& x, at::Tensor result) const override;
  // PEFT ArrowLoraLinearLayer.on_adapter_change: the task adapters are every adapter of the layer
  // except the router and gks_<digits>; when they changed, the prototypes are rebuilt on the next
  // forward and new ones get GenKnowSub once.
  void on_adapter_change(nn::LoraLayerImpl& layer) override;
  std::string merge_refusal() const override;

  // Runs what the next forward would run first: GenKnowSub (once, or on newly added task adapters),
  // then the prototypes (when invalid).
  void prepare(const nn::LoraLayerImpl& layer) const;

  // ---- state, for inspection ----
  const ArrowConfig& config() const { return config_; }
  std::vector<std::string> task_adapter_names() const;
  // (E, in) unit rows in the task adapters' dtype; undefined until built (PEFT's non-persistent
  // buffer).
  at::Tensor prototypes() const;
  bool gks_done() const;

  // Dominant right singular vector of B A by 15 power iterations on v -> A^T (B^T B) (A v) in
  // float32, from v0 ~ randn(in) (a private generator seeded with `rng_seed` when given); sign
  // arbitrary. A: (r, in), B: (out, r).
  static at::Tensor top_right_singular_vec_from_BA(const at::Tensor& A, const at::Tensor& B,
                                                   std::optional<int64_t> rng_seed, int iters = 15,
                                                   double eps = 1e-8);

 private:
  struct Snapshot {
    std::vector<std::string> task_names;
    at::Tensor prototypes;
  };
  Snapshot prepare_locked(const nn::LoraLayerImpl& layer) const;
  void gen_know_sub(const nn::LoraLayerImpl& layer) const;
  void build_prototypes(const nn::LoraLayerImpl& layer) const;

  ArrowConfig config_;
  mutable std::mutex mutex_;
  std::vector<std::string> task_names_;
  mutable std::vector<std::string> gks_pending_;  // task adapters added after GenKnowSub ran
  mutable bool gks_done_ = false;
  mutable at::Tensor prototypes_;  // undefined = to be (re)built
};

// The ArrowForward installed on `layer`'s router, or null.
std::shared_ptr<ArrowForward> arrow_forward(const nn::LoraLayerImpl& layer);

}  // namespace peft
