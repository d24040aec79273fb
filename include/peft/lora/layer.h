// The adapter-ready layer: base weights under the checkpoint's names plus a set of LoRA adapters,
// each with its rank, scaling, dropout and optional variant. PEFT counterpart: LoraLayer
// (tuners/lora/layer.py); the variants are peft/lora/variant.h, trainable tokens and
// modules_to_save their own modules (trainable_tokens.h, modules_to_save.h). Forward may run on
// several threads at once; every mutating method needs exclusive access.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "peft/lora/adapter_dict.h"
#include "peft/lora/adapter_settings.h"
#include "peft/lora/init_data.h"

namespace peft::nn {

class LoraVariant;
class TrainableTokensImpl;
class ModulesToSaveImpl;
namespace mixed {
struct MixedCache;
}

// Base of peft::nn::Linear, Conv1D, Embedding, Conv1d/2d/3d and ParamLora.
class LoraLayerImpl : public torch::nn::Module {
 public:
  ~LoraLayerImpl() override;
  LayerKind kind() const { return kind_; }
  // Linear or GPT-2 Conv1D: what "all-linear" selects.
  bool is_linear() const { return kind_ == LayerKind::kLinear || kind_ == LayerKind::kConv1D; }
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;

  // ---- base weights ("weight", "bias"; bias undefined when absent) ----
  at::Tensor& weight() { return weight_; }
  const at::Tensor& weight() const { return weight_; }
  at::Tensor& bias() { return bias_; }
  const at::Tensor& bias() const { return bias_; }
  bool has_bias() const { return bias_.defined(); }
  // A quantized base keeps packed data in weight(); read base values through float_weight().
  virtual bool is_quantized() const { return false; }
  virtual at::Tensor float_weight() const { return weight_; }
  // Writes new base values (a quantized base quantizes them again).
  void set_base_weights(const at::Tensor& weight, const at::Tensor& bias);
  // Throws UnsupportedError when merged base values could not be written back (a GPTQ base);
  // merge checks it before changing anything.
  virtual void check_base_mergeable() const {}

  // ---- adapters ----
  // Creates (or re-creates) the adapter, initialised per settings.init_lora_weights, with the
  // variant resolve_lora_variant picks; PEFT's errors.
  void update_layer(const std::string& adapter, const AdapterSettings& settings);
  void delete_adapter(const std::string& adapter);
  bool has_adapter(const std::string& adapter) const { return settings_.count(adapter) != 0; }
  std::vector<std::string> adapter_names() const { return adapter_order_; }  // creation order
  const AdapterSettings& adapter_settings(const std::string& adapter) const;
  double scaling(const std::string& adapter) const;
  void set_scale(const std::string& adapter, double factor);  // factor x base_scaling (PEFT)
  // The adapter's tensors under PEFT's adapter-free keys ("lora_A.weight", "lora_B.bias",
  // "lora_embedding_A", the variant's "lora_magnitude_vector", ...); write in place to change them.
  std::vector<std::pair<std::string, at::Tensor>> adapter_tensors(const std::string& adapter) const;
  at::Tensor adapter_tensor(const std::string& adapter, const std::string& key) const;
  std::shared_ptr<LoraVariant> variant(const std::string& adapter) const;  // null: plain LoRA
  // ensure_weight_tying: this Linear head's `adapter` is the LoRA of `source`, the Embedding whose
  // weight it shares (variants/tied.cpp).
  void tie_adapter_to(const std::string& adapter, const std::shared_ptr<LoraLayerImpl>& source);

  // Active adapters are summed in this order and get requires_grad = trainable, the others false.
  void set_active_adapters(const std::vector<std::string>& adapters, bool trainable = true);
  const std::vector<std::string>& active_adapters() const { return active_; }
  // Disabled: forward = base layer (merged adapters unmerged first), adapters frozen.
  void enable_adapters(bool enabled);
  bool adapters_enabled() const { return enabled_; }

  // ---- merging ----
  at::Tensor get_delta_weight(const std::string& adapter) const;  // in the weight's layout
  // Merges `adapters` (default: the active ones) and their trainable tokens; merged ones are
  // skipped with PEFT's warning. safe_merge checks for NaN / Inf before writing.
  void merge(std::optional<std::vector<std::string>> adapters = std::nullopt,
             bool safe_merge = false);
  void unmerge();  // last merged first
  bool merged() const;
  const std::vector<std::string>& merged_adapters() const { return merged_; }
  void remove_all_adapters();  // after merge_and_unload / unload: a plain layer again

  // ---- auxiliary modules: null until first used; ensure_ creates them ----
  TrainableTokensImpl* trainable_tokens() const { return tokens_.get(); }
  TrainableTokensImpl& ensure_trainable_tokens();  // Embedding or Linear, else UnsupportedError
  ModulesToSaveImpl* modules_to_save() const { return modules_to_save_.get(); }
  ModulesToSaveImpl& ensure_modules_to_save();

  // ---- data-driven inits (PEFT: forward hooks and module attributes) ----
  using InputObserver = std::function<void(const at::Tensor& input)>;
  void set_input_observer(InputObserver observer) { observer_ = std::move(observer); }
  LayerInitData& init_data() { return init_data_; }
  const LayerInitData& init_data() const { return init_data_; }

  // Base + every active, unmerged adapter; in a mixed batch row i gets adapter_names[i] alone.
  at::Tensor forward_with_adapters(const at::Tensor& x) const;

  // ---- building blocks for variants and kernels ----
  // The base computation with explicit weights (a modules_to_save copy can stand in).
  virtual at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias) const = 0;
  // scaling * lora_B(lora_A(x)) (+ scaling * lora_B.bias), x cast to the factors' dtype.
  virtual at::Tensor lora_forward(const at::Tensor& x, const std::string& adapter) const = 0;
  // result + the adapter's plain LoRA contribution (the layer's own path, with its fused inference
  // GEMM): what a variant that changes only init or training state computes.
  at::Tensor add_plain_output(at::Tensor result, const at::Tensor& x,
                              const std::string& adapter) const {
    return add_adapter_output(std::move(result), x, adapter);
  }
  // x cast to the factors' dtype, then the adapter's dropout (training only).
  at::Tensor lora_dropout(const at::Tensor& x, const std::string& adapter) const;
  // Plain LoRA's delta: scaling * B A in the base weight's layout.
  virtual at::Tensor lora_delta_weight(const std::string& adapter) const = 0;
  // Replaces the adapter's lora_A (a_side) or lora_B weight by `weight`, a variant's own layout
  // (BD-LoRA's packed blocks); lora_B's bias is kept. Linear / Conv layers only.
  void set_factor_weight(const std::string& adapter, bool a_side, at::Tensor weight);
  // An adapter-keyed dict registered as `name` on first use (DoRA's "lora_magnitude_vector").
  AdapterDictImpl& adapter_dict(const std::string& name);
  const AdapterDictImpl* find_adapter_dict(const std::string& name) const;

 protected:
  explicit LoraLayerImpl(LayerKind kind);
  void register_base(at::Tensor weight, at::Tensor bias);  // once, from the constructor
  // Stores updated float_weight() values (a quantized base quantizes them again).
  virtual void commit_float_weight(const at::Tensor& w) { (void)w; }
  // The adapter's own parameters, created initialised and destroyed by update / delete.
  virtual void create_adapter(const std::string& adapter, const AdapterSettings& settings) = 0;
  virtual void destroy_adapter(const std::string& adapter) = 0;
  virtual std::vector<std::pair<std::string, at::Tensor>> factor_tensors(
      const std::string& adapter) const;
  // Plain LoRA's contribution: result + lora_forward(lora_dropout(x)).
  virtual at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                        const std::string& adapter) const;
  // Mixed batch: each group's adapter on its rows; PEFT's sub-batch loop unless overridden.
  virtual at::Tensor add_mixed_output(at::Tensor result, const at::Tensor& x,
                                      const std::vector<AdapterRows>& groups) const;
  at::Tensor add_mixed_output_loop(at::Tensor result, const at::Tensor& x,
                                   const std::vector<AdapterRows>& groups) const;
  // Linear and Conv: A (a_shape), B (b_shape; a bias with lora_bias) in lora_A_ / lora_B_.
  void add_factors(const std::string& adapter, const AdapterSettings& settings,
                   const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape);
  void remove_factors(const std::string& adapter);
  // scaling * (B2 @ A2), B2 (out, r), A2 (r, in); half precision on CPU multiplies in float32.
  at::Tensor scaled_product(const at::Tensor& B2, const at::Tensor& A2,
                            const std::string& adapter) const;
  AdapterDict lora_A_{nullptr};
  AdapterDict lora_B_{nullptr};
  std::shared_ptr<mixed::MixedCache> mixed_cache_;  // the gathered kernel's stacked factors

 private:
  at::Tensor add_output(at::Tensor result, const at::Tensor& x, const std::string& adapter) const;
  at::Tensor forward_mixed(const at::Tensor& x, const std::vector<std::string>& names) const;
  // PiSSA, OLoRA, orthogonal, CorDA, LoRA-GA, LoftQ on a Linear / Conv1D (layer_init.cpp).
  void init_from_weight(const AdapterSettings& settings, at::Tensor& A, at::Tensor& B);
  void adapters_changed();  // drops the mixed-batch cache, tells the variants
  LayerKind kind_;
  at::Tensor weight_;
  at::Tensor bias_;
  std::map<std::string, AdapterSettings> settings_;
  std::map<std::string, double> scaling_;
  std::map<std::string, std::shared_ptr<LoraVariant>> variants_;
  std::map<std::string, AdapterDict> adapter_dicts_;
  std::vector<std::string> adapter_order_;
  std::vector<std::string> active_{"default"};
  std::vector<std::string> merged_;
  bool enabled_ = true;
  std::shared_ptr<ModulesToSaveImpl> modules_to_save_;
  std::shared_ptr<TrainableTokensImpl> tokens_;
  InputObserver observer_;
  LayerInitData init_data_;
};

// The adapter-ready layers of a module tree by full name, in named_modules() order (layers nested
// in another one are not listed; a parameter's LoRA is named after PEFT's ParamWrapper nesting).
using NamedLoraLayers = std::vector<std::pair<std::string, std::shared_ptr<LoraLayerImpl>>>;
NamedLoraLayers lora_layers(torch::nn::Module& root);

}  // namespace peft::nn
