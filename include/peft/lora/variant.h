// The LoRA variant seam: how one adapter of one layer departs from plain LoRA (DoRA, aLoRA, Arrow,
// tied adapters,
// ...). PEFT counterpart: LoraVariant (tuners/lora/variants.py) with init / forward / merge_safe /
// merge_unsafe / unmerge, chosen per adapter by resolve_lora_variant when the adapter is created.
//
// A layer keeps one variant object per adapter that has one. Its forward, merge, unmerge and
// get_delta_weight call the hooks below for that adapter instead of the plain LoRA math, so a new
// variant is one file in src/lora/variants/ plus one line in src/lora/variants/registry.cpp.
// forward() may run on several threads at once; every other hook runs with exclusive access to the
// layer.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft::nn {

class LoraLayerImpl;
struct AdapterSettings;

class LoraVariant {
 public:
  virtual ~LoraVariant() = default;
  // The variant's name in messages ("DoRA", "aLoRA", ...).
  virtual const char* name() const = 0;

  // PEFT LoraVariant.init: runs after the adapter's factors exist (e.g. DoRA registers its
  // magnitude vector).
  virtual void init(LoraLayerImpl& layer, const std::string& adapter);
  // Undoes init before the adapter leaves the layer.
  virtual void remove(LoraLayerImpl& layer, const std::string& adapter);
  // result + the adapter's contribution for the layer input x (any leading shape).
  virtual at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter,
                             const at::Tensor& x, at::Tensor result) const = 0;
  // What merging adds to the base weight, in its layout (default: the layer's plain scaling * B A).
  virtual at::Tensor get_delta_weight(const LoraLayerImpl& layer, const std::string& adapter) const;
  // Throws UnsupportedError when the adapter cannot be merged; checked for every adapter before any
  // is merged.
  virtual void check_mergeable(const LoraLayerImpl& layer, const std::string& adapter) const;
  // PEFT merge_safe: the merged weight, `weight` (the float base weight) left untouched. Default
  // weight + delta.
  virtual at::Tensor merge_safe(LoraLayerImpl& layer, const std::string& adapter,
                                const at::Tensor& weight);
  // PEFT merge_unsafe: merges into `weight` in place. Default: weight = merge_safe(...).
  virtual void merge_unsafe(LoraLayerImpl& layer, const std::string& adapter, at::Tensor& weight);
  // PEFT unmerge: the weight with the adapter taken out again. Default weight - delta.
  virtual at::Tensor unmerge(LoraLayerImpl& layer, const std::string& adapter,
                             const at::Tensor& weight);
  // Tensors the variant adds to the adapter's saved state, under PEFT's adapter-free keys.
  virtual void append_tensors(const LoraLayerImpl& layer, const std::string& adapter,
                              std::vector<std::pair<std::string, at::Tensor>>& out) const;
  // Non-empty: the adapter cannot serve rows of a mixed batch (PEFT's adapter_names), for this
  // reason.
  virtual std::string mixed_batch_refusal() const;
  // After any adapter of the layer was created or deleted (PEFT on_adapter_change).
  virtual void on_adapter_change(LoraLayerImpl& layer);
  // True for an adapter tensor (adapter-free key, e.g. "lora_B.weight") that stays frozen while the
  // adapter trains, yet is saved (PEFT frozen_peft_weight_names: MiCA's lora_B).
  virtual bool keeps_frozen(const std::string& tensor_key) const;
};

// Chooses the variant of an adapter from its settings and the layer's kind; null for plain LoRA.
// ConfigError / UnsupportedError for a combination no layer of this kind supports. Defined in
// src/lora/variants/registry.cpp, the one place that lists the variants.
std::shared_ptr<LoraVariant> resolve_lora_variant(const LoraLayerImpl& layer,
                                                  const AdapterSettings& settings);

}  // namespace peft::nn
