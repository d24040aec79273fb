// Arrow's router as a LoRA variant: token-wise top-k routing over the layer's task adapters by
// their SVD prototypes, with optional General Knowledge Subtraction (GenKnowSub). PEFT
// counterparts: ArrowLinearVariant (variants.py) and ArrowLoraLinearLayer (tuners/lora/arrow.py).
// Setting up a router model (create_arrow_model, add_arrow_router) is peft/arrow.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "peft/config.h"
#include "peft/lora/variant.h"

namespace peft {

// The router adapter's name (PEFT hard-codes it, and so does its task / general adapter
// bookkeeping).
inline constexpr const char* kArrowRouterName = "arrow_router";
inline constexpr const char* kArrowTaskPrefix = "task_";
inline constexpr const char* kArrowGksPrefix = "gks_";

namespace nn {

// One per router adapter per layer. Lazily, on the first forward after a change of the layer's
// adapters: GenKnowSub (use_gks), then one prototype per task adapter. forward may run on several
// threads; the lazy state is guarded by a mutex.
class ArrowLinearVariant final : public LoraVariant {
 public:
  explicit ArrowLinearVariant(ArrowConfig config);
  const char* name() const override { return "Arrow"; }

  // result + sum_e coeff_e(t) * s_e * B_e A_e t for every token row t of x.
  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override;
  // PEFT: "Cannot merge an active Arrow router adapter. Remove it first."
  void check_mergeable(const LoraLayerImpl& layer, const std::string& adapter) const override;
  // PEFT ArrowLoraLinearLayer.on_adapter_change: the task adapters are every adapter of the layer
  // except the router and gks_<digits>; when they changed, the prototypes are rebuilt on the next
  // forward and new ones get GenKnowSub once.
  void on_adapter_change(LoraLayerImpl& layer) override;

  // Runs what the next forward would run first: GenKnowSub (once, or on newly added task adapters),
  // then the prototypes (when invalid).
  void prepare(const LoraLayerImpl& layer) const;

  // ---- state, for inspection ----
  const ArrowConfig& config() const { return config_; }
  std::vector<std::string> task_adapter_names() const;
  // (E, in) unit rows in the task adapters' dtype; undefined until built (PEFT's non-persistent
  // buffer).
  at::Tensor prototypes() const;
  bool gks_done() const;

  // Dominant right singular vector of B A by `iters` power iterations on v -> A^T (B^T B) (A v) in
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
  Snapshot prepare_locked(const LoraLayerImpl& layer) const;
  void gen_know_sub(const LoraLayerImpl& layer) const;
  void build_prototypes(const LoraLayerImpl& layer) const;

  ArrowConfig config_;
  mutable std::mutex mutex_;
  std::vector<std::string> task_names_;
  mutable std::vector<std::string> gks_pending_;  // task adapters added after GenKnowSub ran
  mutable bool gks_done_ = false;
  mutable at::Tensor prototypes_;  // undefined = to be (re)built
};

// The router variant installed on `layer` (adapter "arrow_router"), or null.
std::shared_ptr<ArrowLinearVariant> arrow_router(const LoraLayerImpl& layer);

}  // namespace nn
}  // namespace peft
