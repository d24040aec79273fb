// The model zoo's interface: Hugging Face checkpoints (config.json + safetensors) as LibTorch
// modules built from peft::nn layers, under Hugging Face's module names, and the registry keyed by
// config.json's model_type. Counterparts: transformers' AutoModelForCausalLM /
// AutoModelForSequenceClassification.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "peft/model_info.h"
#include "peft/quant/quantized_weight.h"

namespace peft::models {

enum class ModelTask { kCausalLm, kSequenceClassification };

// Key / value cache for incremental decoding: one entry per layer, each (batch, kv_heads,
// cached_seq, head_dim). A model appends the new positions on every forward that is given the
// cache.
struct KVCache {
  std::vector<at::Tensor> keys;
  std::vector<at::Tensor> values;
  // Number of cached positions (0 when empty).
  int64_t length() const {
    return keys.empty() || !keys.front().defined() ? 0 : keys.front().size(2);
  }
  void clear() {
    keys.clear();
    values.clear();
  }
};

struct ForwardInput {
  at::Tensor input_ids;       // (batch, seq) int64
  at::Tensor attention_mask;  // optional (batch, cached + seq) of 1 (attend) / 0 (padding);
                              // undefined = all 1
  at::Tensor token_type_ids;  // optional, BERT-style encoders (batch, seq); undefined = zeros
  KVCache* cache = nullptr;   // optional (causal LMs): read and appended to
};

// A loaded checkpoint. Implementations register their submodules under Hugging Face's names
// ("model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn",
// "bert.encoder.layer.0.attention.self.query") so that state-dict keys, PEFT target_modules and
// adapter files apply unchanged.
class PretrainedModel : public torch::nn::Module, public PeftModelInfo {
 public:
  // Causal LM: logits (batch, seq, vocab). Sequence classifier: logits (batch, num_labels).
  virtual at::Tensor forward(const ForwardInput& input) = 0;
  virtual ModelTask task() const = 0;
  virtual int64_t num_hidden_layers() const = 0;
  virtual int64_t vocab_size() const = 0;
  // Full name of the input embedding module ("model.embed_tokens").
  std::string input_embedding_name() const override = 0;
  // Checkpoint keys that alias another parameter (tied lm_head), written by save but absent from
  // many files.
  virtual std::vector<std::pair<std::string, std::string>> tied_weights() const { return {}; }
  bool ties_word_embeddings() const override { return !tied_weights().empty(); }

  // Rewrites a checkpoint's tensors into this model's layout before loading (e.g. per-expert MoE
  // weights stacked into fused 3-D expert parameters, legacy module names). Default: unchanged.
  virtual void convert_checkpoint(std::map<std::string, at::Tensor>& tensors) const {
    (void)tensors;
  }

  // The config.json text the model was built from.
  const std::string& config_json() const { return config_json_; }
  void set_config_json(std::string text) { config_json_ = std::move(text); }
  std::string name_or_path() const override { return name_or_path_; }
  void set_name_or_path(std::string p) { name_or_path_ = std::move(p); }

  // transformers' gradient checkpointing: in training mode with grad enabled and no KV cache, each
  // transformer layer keeps only its input and recomputes its activations in backward (same loss
  // and gradients, dropout masks included; less memory, one more layer forward per layer). Works
  // when the layers' input needs no gradient (LoRA on a frozen embedding). Off by default.
  void gradient_checkpointing_enable();
  void gradient_checkpointing_disable();
  bool is_gradient_checkpointing() const { return gradient_checkpointing_; }

 private:
  std::string config_json_;
  std::string name_or_path_;
  bool gradient_checkpointing_ = false;
};

// At least how many parameters a config.json describes (embeddings, attention and MLP of every
// layer), after the size checks from_config makes (ConfigError beyond this machine's memory).
double config_parameters_lower_bound(const std::string& config_json_text);

// The longest sequence the model's config.json declares (max_position_embeddings, or GPT-2's
// n_positions); nullopt when it names none.
std::optional<int64_t> max_position_embeddings(const PretrainedModel& model);

// Builds a model (random weights) from config.json text. Throws UnsupportedError for an unknown
// model_type, listing the supported ones, and ConfigError for missing / invalid config fields.
std::shared_ptr<PretrainedModel> from_config(const std::string& config_json_text);

struct LoadOptions {
  // Parameter dtype. Default: float32 (as transformers without torch_dtype).
  std::optional<c10::ScalarType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  // QLoRA-style quantized base (bitsandbytes load_in_4bit / load_in_8bit): every peft::nn::Linear
  // but the output embedding is quantized after loading. A checkpoint saved by bitsandbytes is read
  // in its own quantization whatever this says.
  std::optional<quant::QuantizeOptions> quantize;
};

// Loads a Hugging Face checkpoint folder: config.json + model.safetensors, or a sharded
// model.safetensors.index.json. Every missing or mis-shaped tensor is reported at once (FormatError
// / ShapeMismatchError); unexpected tensors are warned about.
std::shared_ptr<PretrainedModel> load_pretrained(const std::string& dir,
                                                 const LoadOptions& options = {});

// transformers' save_pretrained, the counterpart of load_pretrained: writes dir/model.safetensors
// with the model's parameters under their checkpoint names, a tied tensor (tied_weights()) that
// still shares its source's storage written once as transformers does, and dir/config.json (the
// text the model was built from). Creates `dir`.
void save_pretrained(const PretrainedModel& model, const std::string& dir);

// model_type values with a registered family, sorted.
std::vector<std::string> supported_model_types();

}  // namespace peft::models
