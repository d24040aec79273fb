// Shared adapter bookkeeping of every adapter-ready layer: per-adapter slots (r, alpha, scaling, dropout),
// active / merged / disabled state, merge and unmerge, and modules_to_save copies.
// PEFT counterparts: LoraLayer (tuners/lora/layer.py) and ModulesToSaveWrapper (utils/other.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "peft/config.h"

namespace peft::nn {

// kParam: the LoRA of a raw parameter (target_parameters, include/peft/lora/param.h).
enum class LayerKind { kLinear, kConv1D, kEmbedding, kConv1d, kConv2d, kConv3d, kParam };
std::string to_string(LayerKind kind);

// Per-adapter values of one layer, resolved from LoraConfig + rank_pattern / alpha_pattern.
struct AdapterSettings {
  int r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  double lora_dropout = 0.0;
  bool lora_bias = false;
  InitLoraWeights init_lora_weights;
  bool use_dora = false;
  // aLoRA: the adapter acts on the invocation sequence's last occurrence and every position after it.
  std::optional<std::vector<int64_t>> alora_invocation_tokens;
  // LoRA-GA's direction / scale choices (init_lora_weights = "lora_ga").
  std::optional<LoraGAConfig> lora_ga_config;
  // LoftQ's bits / iterations (init_lora_weights = "loftq").
  std::optional<LoftQConfig> loftq_config;
  // alpha / r, or alpha / sqrt(r) with rsLoRA.
  double base_scaling() const;
};

// The rows of a batch that one adapter serves in a mixed batch (PEFT's forward(..., adapter_names=[...])).
struct AdapterRows {
  std::string adapter;
  std::vector<int64_t> rows;  // ascending batch indices
};

class LoraLayerImpl;
namespace mixed {
struct MixedCache;
}

// An adapter whose contribution to forward is computed by an object rather than by its own factors (PEFT's LoRA
// variants with a custom forward: Arrow's router). Installed per layer with LoraLayerImpl::set_adapter_forward.
class AdapterForward {
 public:
  virtual ~AdapterForward() = default;
  // Returns result + the adapter's contribution for the input x (the layer's input, any leading shape).
  virtual at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                             at::Tensor result) const = 0;
  // Called after an adapter of the layer was created or deleted (PEFT's on_adapter_change).
  virtual void on_adapter_change(LoraLayerImpl& /*layer*/) {}
  // Non-empty: merging the adapter is refused with this message.
  virtual std::string merge_refusal() const { return {}; }
};

// One LoRA factor: a weight (and optionally a bias) registered as "weight" / "bias", so that parameter names
// read ...lora_A.<adapter>.weight exactly as in PEFT.
class FactorImpl : public torch::nn::Module {
 public:
  FactorImpl(at::Tensor weight, at::Tensor bias);
  at::Tensor weight;
  at::Tensor bias;  // undefined when absent
};
TORCH_MODULE(Factor);

// A module whose children are named by adapter (PEFT's ModuleDict keyed by adapter name). Unlike
// torch::nn::ModuleDict, `erase` also unregisters the child, so its parameters disappear.
class AdapterDictImpl : public torch::nn::Module {
 public:
  void insert(const std::string& adapter, std::shared_ptr<torch::nn::Module> module);
  void erase(const std::string& adapter);
  bool contains(const std::string& adapter) const;
  std::shared_ptr<torch::nn::Module> at(const std::string& adapter) const;
  template <class T>
  std::shared_ptr<T> get(const std::string& adapter) const {
    return std::dynamic_pointer_cast<T>(at(adapter));
  }
  std::vector<std::string> keys() const;

 private:
  std::map<std::string, std::shared_ptr<torch::nn::Module>> items_;
};
TORCH_MODULE(AdapterDict);

// Base of peft::nn::Linear, Conv1D, Embedding, Conv1d/2d/3d. Holds the base weights under the checkpoint's
// names ("weight", "bias") and an initially empty set of adapters; forward adds the active ones.
// Forward may run on several threads at once; every mutating method needs exclusive access.
class LoraLayerImpl : public torch::nn::Module {
 public:
  ~LoraLayerImpl() override;
  LayerKind kind() const { return kind_; }
  // Linear or GPT-2 Conv1D (what "all-linear" selects).
  bool is_linear() const { return kind_ == LayerKind::kLinear || kind_ == LayerKind::kConv1D; }
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;

  // Base parameters (the checkpoint's "weight" / "bias"); bias is undefined when the layer has none.
  at::Tensor& weight() { return weight_; }
  const at::Tensor& weight() const { return weight_; }
  at::Tensor& bias() { return bias_; }
  const at::Tensor& bias() const { return bias_; }
  bool has_bias() const { return bias_.defined(); }
  // True when the base weight is kept quantized (a Linear after quantize(); weight() then holds the packed data
  // as bitsandbytes' Params4bit / Int8Params do).
  virtual bool is_quantized() const { return false; }
  // The base weight's values as a floating-point tensor: weight() itself, or for a quantized base a dequantized
  // copy. Read the base through it (merging, weight-based inits, KappaTune, intruders).
  virtual at::Tensor float_weight() const { return weight_; }

  // ---- LoRA adapters ----
  // Creates (or re-creates) the adapter's parameters on the base weight's device and dtype and initialises
  // them per settings.init_lora_weights. Throws ConfigError / UnsupportedError with PEFT's messages.
  void update_layer(const std::string& adapter, const AdapterSettings& settings);
  void delete_adapter(const std::string& adapter);
  bool has_adapter(const std::string& adapter) const { return settings_.count(adapter) != 0; }
  std::vector<std::string> adapter_names() const;  // creation order
  const AdapterSettings& adapter_settings(const std::string& adapter) const;
  double scaling(const std::string& adapter) const;
  // scaling = factor x (alpha / r) (PEFT set_scale).
  void set_scale(const std::string& adapter, double factor);
  // The adapter's tensors keyed by PEFT's adapter-free suffix: "lora_A.weight", "lora_B.weight",
  // "lora_B.bias", "lora_embedding_A", "lora_embedding_B". The references stay valid until the adapter is
  // deleted; assigning through them replaces values in place (use copy_ under NoGradGuard).
  virtual std::vector<std::pair<std::string, at::Tensor>> adapter_tensors(const std::string& adapter) const;
  // One of adapter_tensors(adapter) by its key; undefined when the adapter has no such tensor here.
  at::Tensor adapter_tensor(const std::string& adapter, const std::string& key) const;

  // Active adapters are summed in this order. Their parameters get requires_grad = trainable, every other
  // adapter's parameters requires_grad = false (PEFT LoraLayer.set_adapter).
  void set_active_adapters(const std::vector<std::string>& adapters, bool trainable = true);
  const std::vector<std::string>& active_adapters() const { return active_; }
  // Disabled: forward = base layer (merged adapters are unmerged first). Disabling freezes adapter params;
  // enabling re-applies set_active_adapters.
  void enable_adapters(bool enabled);
  bool adapters_enabled() const { return enabled_; }

  // ---- DoRA (use_dora) ----
  // The magnitude vector of a DoRA adapter (PEFT's lora_magnitude_vector[adapter].weight; saved under the key
  // "lora_magnitude_vector"); undefined for a plain adapter. Shapes: Linear (out,), Embedding (embedding_dim,),
  // ConvNd (1, out, 1...).
  at::Tensor dora_magnitude(const std::string& adapter) const;

  // ---- merging ----
  // What merging `adapter` adds to `weight`: (scaling x B @ A) in the base weight's layout and dtype.
  virtual at::Tensor get_delta_weight(const std::string& adapter) const = 0;
  // Merges `adapters` (default: the active ones) into the base weight. Already merged names are skipped with
  // PEFT's warning. safe_merge checks the result for NaN/Inf before writing it.
  void merge(std::optional<std::vector<std::string>> adapters = std::nullopt, bool safe_merge = false);
  // Unmerges every merged adapter, last merged first.
  void unmerge();
  bool merged() const { return !merged_.empty() || !tokens_merged_.empty(); }
  const std::vector<std::string>& merged_adapters() const { return merged_; }

  // ---- modules_to_save (a full trainable copy of this layer per adapter) ----
  // `shared_weight` (ensure_weight_tying): the copy's weight is that tensor (another layer's copy) instead of a
  // clone of this layer's weight, so the tied copies train as one.
  void add_trainable_copy(const std::string& adapter, const at::Tensor& shared_weight = {});
  void delete_trainable_copy(const std::string& adapter);
  bool has_trainable_copy(const std::string& adapter) const;
  std::vector<std::string> trainable_copy_names() const;
  // The copy's tensors keyed "weight" / "bias".
  std::vector<std::pair<std::string, at::Tensor>> trainable_copy_tensors(const std::string& adapter) const;
  // Writes the copy into the base parameters (merge_and_unload / unload of a modules_to_save wrapper).
  void promote_trainable_copy(const std::string& adapter);
  // True when the base weights in use are those of a modules_to_save copy (enabled, active copy).
  bool uses_trainable_copy() const;

  // ---- trainable tokens (PEFT TrainableTokensLayer; Embedding, or a Linear whose weight is tied to one) ----
  // Rows `indices` of the weight get a trainable stand-in `trainable_tokens_delta` (n, dim), initialised as a
  // copy of those rows (despite its name, PEFT stores the rows, not a difference). `tied_delta` makes this layer
  // share another layer's parameter (a tied lm_head), which is then not saved again.
  void add_trainable_tokens(const std::string& adapter, const std::vector<int64_t>& indices,
                            const at::Tensor& tied_delta = {});
  void delete_trainable_tokens(const std::string& adapter);
  bool has_trainable_tokens(const std::string& adapter) const;
  bool trainable_tokens_tied(const std::string& adapter) const;
  const std::vector<int64_t>& trainable_token_indices(const std::string& adapter) const;
  at::Tensor trainable_tokens_delta(const std::string& adapter) const;
  std::vector<std::string> trainable_tokens_names() const;

  // ---- weight tying of LoRA (ensure_weight_tying on tied input / output embeddings) ----
  // Makes `adapter` of this layer (a Linear whose weight is tied to an Embedding: the lm_head) use the LoRA of
  // `source` (that Embedding, which must carry `adapter`): the head's delta is the embedding's delta on the shared
  // weight, computed as s * (x B_e) A_e. Nothing of its own is created or saved, and merging skips it (the
  // embedding's merge already changed the shared weight).
  void tie_adapter_to(const std::string& adapter, const std::shared_ptr<LoraLayerImpl>& source);
  bool adapter_tied(const std::string& adapter) const { return tied_adapters_.count(adapter) != 0; }

  // ---- data-driven initialisation (EVA, CorDA, LoRA-GA) ----
  // Called with the layer's input at the start of every forward (PEFT registers forward hooks for this).
  // An empty function removes the observer.
  using InputObserver = std::function<void(const at::Tensor& input)>;
  void set_input_observer(InputObserver observer) { observer_ = std::move(observer); }
  // Tensors a preprocessing step attaches to the layer (PEFT sets module attributes such as `eigens` or
  // `_peft_loraga_grad`); update_layer reads them for the init that needs them ("corda_U", "corda_S",
  // "corda_V", "loraga_grad").
  void set_init_data(const std::string& key, at::Tensor value);
  at::Tensor init_data(const std::string& key) const;  // undefined when absent
  void clear_init_data();

  // Removes every adapter and copy (after merge_and_unload / unload); the layer is then a plain layer.
  void remove_all_adapters();

  // ---- custom adapter forwards (Arrow) ----
  // Makes forward call `f` for `adapter` instead of adding s * B A x (null removes it). The adapter must exist.
  void set_adapter_forward(const std::string& adapter, std::shared_ptr<AdapterForward> f);
  std::shared_ptr<AdapterForward> adapter_forward(const std::string& adapter) const;

  // The layer's forward for any kind: base + every active, unmerged adapter (PEFT's forward dispatch). When the
  // current ForwardContext carries adapter_names (a mixed batch), row i gets only adapter_names[i] instead.
  at::Tensor forward_with_adapters(const at::Tensor& x) const;

 protected:
  explicit LoraLayerImpl(LayerKind kind);
  // Registers the base parameters. Call once from the concrete constructor.
  void register_base(at::Tensor weight, at::Tensor bias);
  // Stores an updated float_weight() (merge, unmerge, inits that mutate the base): a quantized base quantizes it
  // again; a float base was updated in place already (float_weight() is weight()), so the default does nothing.
  virtual void commit_float_weight(const at::Tensor& w) { (void)w; }

  // Creates the adapter's parameters (registered in lora_A_/lora_B_ or the embedding dicts) and
  // initialises them. Called by update_layer after validation.
  virtual void create_adapter(const std::string& adapter, const AdapterSettings& settings) = 0;
  virtual void destroy_adapter(const std::string& adapter) = 0;
  // The base computation with explicit parameters (so a modules_to_save copy can stand in).
  virtual at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias) const = 0;
  // Adds the adapter's contribution (already scaled) to result.
  virtual at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                        const std::string& adapter) const = 0;
  // Mixed batch: adds each group's adapter to its rows of result. The default is PEFT's sub-batch loop (one
  // add_adapter_output per group); Linear and Embedding override it with a gathered kernel.
  virtual at::Tensor add_mixed_output(at::Tensor result, const at::Tensor& x,
                                      const std::vector<AdapterRows>& groups) const;
  // PEFT's sub-batch loop over `groups` (the reference algorithm; kernels fall back to it).
  at::Tensor add_mixed_output_loop(at::Tensor result, const at::Tensor& x,
                                   const std::vector<AdapterRows>& groups) const;
  // One adapter's contribution, through its custom forward when it has one.
  at::Tensor add_output(at::Tensor result, const at::Tensor& x, const std::string& adapter) const;

  // Linear and Conv keep factors here; Embedding uses its own ParameterDicts.
  AdapterDict lora_A_{nullptr};
  AdapterDict lora_B_{nullptr};
  double dropout_p(const std::string& adapter) const;
  // Linear and Conv: creates A (a_shape) and B (b_shape, plus a bias of out_features() with lora_bias) on the
  // base weight's device and dtype, initialises them per settings and registers them as lora_A / lora_B.
  void add_factors(const std::string& adapter, const AdapterSettings& settings, const std::vector<int64_t>& a_shape,
                   const std::vector<int64_t>& b_shape);
  void remove_factors(const std::string& adapter);
  // scaling * (B2 @ A2) with B2: (out, r), A2: (r, in); on CPU, half-precision factors are multiplied in float32
  // (as PEFT does) and the result cast back.
  at::Tensor scaled_product(const at::Tensor& B2, const at::Tensor& A2, const std::string& adapter) const;
  // Weight-based inits (PiSSA, OLoRA, orthogonal, CorDA, LoRA-GA) of a Linear / Conv1D adapter: replaces A, B
  // and, for those that mutate the base, the base weight. Called by add_factors.
  void init_from_weight(const std::string& adapter, const AdapterSettings& settings, at::Tensor& A, at::Tensor& B);
  // DoRA: the magnitude dict (registered on first use) and the row-norm helpers of each layer type.
  AdapterDict lora_magnitude_vector_{nullptr};
  void set_dora_magnitude(const std::string& adapter, at::Tensor magnitude);
  // ||W + scaling * dW|| per output channel (detached), shaped like the magnitude; `delta` already scaled and in
  // the base weight's layout.
  at::Tensor dora_weight_norm(const at::Tensor& weight, const at::Tensor& delta) const;
  // m / ||W + dW|| shaped to scale the stored weight: (out, 1) Linear, (1, out) Conv1D, (1, dim) Embedding,
  // (out, 1, 1...) ConvNd.
  at::Tensor dora_factor_for_weight(const at::Tensor& factor) const;
  // The layer whose LoRA a tied adapter uses (null when `adapter` is not tied).
  std::shared_ptr<LoraLayerImpl> tied_source(const std::string& adapter) const;
  // The trainable-token-substituted weight for forward (undefined when no token adapter is active).
  at::Tensor weight_with_tokens(const at::Tensor& weight) const;
  // The same for the token adapters among `adapters` (undefined when there are none).
  at::Tensor weight_with_tokens(const at::Tensor& weight, const std::vector<std::string>& adapters) const;
  // The gathered kernel's stacked factors per adapter set (src/lora/mixed_kernel.h); cleared when adapters change.
  std::shared_ptr<mixed::MixedCache> mixed_cache_;
  void merge_tokens(const std::vector<std::string>& adapters);
  void unmerge_tokens();

 private:
  LayerKind kind_;
  at::Tensor weight_;
  at::Tensor bias_;
  std::map<std::string, AdapterSettings> settings_;
  std::vector<std::string> adapter_order_;
  std::map<std::string, double> scaling_;
  std::vector<std::string> active_{"default"};
  std::vector<std::string> merged_;
  bool enabled_ = true;
  AdapterDict modules_to_save_{nullptr};
  // DoRA merge caches ||W + dW|| per merged adapter (PEFT "{a}-weight_norm") for an exact unmerge.
  std::map<std::string, at::Tensor> dora_merge_norm_;
  // Trainable tokens.
  struct TokenSlot {
    std::vector<int64_t> indices;
    at::Tensor index;     // int64 tensor of indices on the weight's device
    at::Tensor delta;     // (n, dim) parameter
    at::Tensor original;  // (n, dim) buffer: the base rows
    bool tied = false;
  };
  std::map<std::string, TokenSlot> tokens_;
  std::shared_ptr<torch::nn::Module> token_adapter_;
  std::vector<std::string> tokens_merged_;
  InputObserver observer_;
  std::map<std::string, std::weak_ptr<LoraLayerImpl>> tied_adapters_;
  std::map<std::string, at::Tensor> init_data_;
  std::map<std::string, std::shared_ptr<AdapterForward>> adapter_forwards_;
  at::Tensor forward_mixed(const at::Tensor& x, const std::vector<std::string>& names) const;
  // After an adapter was created or deleted: drops the mixed-batch cache, tells the custom forwards.
  void adapters_changed();
};

// The adapter-ready layers of a module tree, by full dotted name, in named_modules() order (layers nested in
// another adapter-ready layer, e.g. modules_to_save copies, are not listed).
std::vector<std::pair<std::string, std::shared_ptr<LoraLayerImpl>>> lora_layers(torch::nn::Module& root);

}  // namespace peft::nn
