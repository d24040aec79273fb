// Llama, Mistral, Qwen2, Qwen3 and the mixture-of-experts Mixtral and Qwen3-MoE causal LMs (one
// decoder with per-family switches), built from peft::nn layers under transformers' module names.
// Counterparts: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
// MixtralForCausalLM, Qwen3MoeForCausalLM (transformers/models/<type>/modeling_<type>.py).
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "attention.h"
#include "checkpoint.h"
#include "config_reader.h"
#include "families.h"
#include "moe.h"
#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/linear.h"
#include "replicate.h"
#include "rope.h"

namespace peft::models::detail {
namespace {

// What the four families differ in, resolved from config.json once.
struct LlamaSettings {
  LlamaFamily family = LlamaFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  bool qkv_bias = false;  // llama / qwen3: attention_bias; qwen2: always; mistral: never
  bool o_bias = false;    // llama / qwen3: attention_bias
  bool mlp_bias = false;  // llama: mlp_bias
  bool qk_norm = false;   // qwen3: RMSNorm over head_dim on q and k before RoPE
  bool tie_word_embeddings = false;
  std::optional<int64_t> padding_idx;  // config.pad_token_id when inside the vocabulary
  std::vector<std::optional<int64_t>> sliding_window;  // per layer; nullopt = full causal attention
  RotaryEmbedding rope;
  std::optional<MoeSettings> moe;  // mixtral / qwen3_moe
  std::vector<bool> sparse;        // per layer: mlp is a SparseMoeBlock (moe.h)
};

// Per-layer sliding windows. Mistral / Mixtral: config.sliding_window on every layer (absent =
// MistralConfig's 4096 / MixtralConfig's None, null = none). Qwen3-MoE: every layer when
// use_sliding_window (Qwen3MoeConfig, v5). Qwen2 / Qwen3: layer_types when given, else
// use_sliding_window for layers >= max_window_layers.
std::vector<std::optional<int64_t>> read_sliding_windows(const ConfigReader& c, LlamaFamily family,
                                                         int64_t layers) {
  using F = LlamaFamily;
  const std::string type = to_string(family);
  std::vector<std::optional<int64_t>> out(static_cast<size_t>(layers));
  if (family == F::kLlama) return out;
  std::optional<int64_t> window;
  if (c.has("sliding_window")) {
    window = c.get<int64_t>("sliding_window");
  } else if ((family == F::kMistral || family == F::kQwen3Moe) &&
             !c.json().contains("sliding_window")) {
    window = 4096;
  }
  PEFT_CHECK(!window || *window > 0, ConfigError, "config.json",
             type << " config field \"sliding_window\" must be positive or null; got " << *window);
  if (!window) return out;
  if (family == F::kMistral || family == F::kMixtral ||
      (family == F::kQwen3Moe && c.get<bool>("use_sliding_window", false))) {
    std::fill(out.begin(), out.end(), window);
    return out;
  }
  if (family == F::kQwen3Moe) return out;
  if (c.has("layer_types")) {
    const auto types = c.get<std::vector<std::string>>("layer_types");
    PEFT_CHECK(static_cast<int64_t>(types.size()) == layers, ConfigError, "config.json",
               type << " config field \"layer_types\" has " << types.size()
                    << " entries; expected num_hidden_layers = " << layers);
    for (size_t i = 0; i < types.size(); ++i) {
      PEFT_CHECK(types[i] == "sliding_attention" || types[i] == "full_attention", ConfigError,
                 "config.json",
                 type << " config field \"layer_types\"[" << i << "] is \"" << types[i]
                      << "\"; expected \"sliding_attention\" or \"full_attention\"");
      if (types[i] == "sliding_attention") out[i] = window;
    }
    return out;
  }
  if (c.get<bool>("use_sliding_window", false)) {
    const auto first = c.get<int64_t>("max_window_layers", 28);
    for (int64_t i = std::max<int64_t>(first, 0); i < layers; ++i)
      out[static_cast<size_t>(i)] = window;
  }
  return out;
}

LlamaSettings read_settings(const nlohmann::json& config) {
  LlamaSettings s;
  using F = LlamaFamily;
  s.family = parse_llama_family(config.at("model_type").get<std::string>());
  const F f = s.family;
  const std::string t = to_string(f);  // for messages
  ConfigReader c(config, t);
  s.vocab_size = c.positive("vocab_size");
  s.hidden_size = c.positive("hidden_size");
  s.num_hidden_layers = c.positive("num_hidden_layers");
  s.moe = read_moe_settings(c, f, s.hidden_size);
  s.sparse = read_sparse_layers(c, f, s.num_hidden_layers);
  // Mixtral's experts use intermediate_size, and so do the dense layers.
  if (f == F::kMixtral || std::find(s.sparse.begin(), s.sparse.end(), false) != s.sparse.end())
    s.intermediate_size = c.positive("intermediate_size");
  s.num_attention_heads = c.positive("num_attention_heads");
  s.num_key_value_heads =
      c.has("num_key_value_heads") ? c.positive("num_key_value_heads") : s.num_attention_heads;
  PEFT_CHECK(s.num_attention_heads % s.num_key_value_heads == 0, ConfigError, "config.json",
             t << " config field \"num_key_value_heads\" (" << s.num_key_value_heads
               << ") must divide num_attention_heads (" << s.num_attention_heads << ")");
  if (c.has("head_dim")) {
    s.head_dim = c.positive("head_dim");
  } else {
    PEFT_CHECK(s.hidden_size % s.num_attention_heads == 0, ConfigError, "config.json",
               t << " config field \"hidden_size\" (" << s.hidden_size
                 << ") is not divisible by num_attention_heads (" << s.num_attention_heads
                 << ") and no head_dim is given");
    s.head_dim = s.hidden_size / s.num_attention_heads;
  }
  s.rms_norm_eps = c.get<double>("rms_norm_eps", f == F::kMixtral ? 1e-5 : 1e-6);
  PEFT_CHECK(s.rms_norm_eps > 0, ConfigError, "config.json",
             t << " config field \"rms_norm_eps\" must be positive; got " << s.rms_norm_eps);
  const auto act = c.get<std::string>("hidden_act", "silu");
  PEFT_CHECK(act == "silu" || act == "swish", UnsupportedError, "config.json",
             t << " config field \"hidden_act\" is \"" << act << "\"; supported: silu, swish");
  const bool attention_bias = c.get<bool>("attention_bias", false);
  if (f == F::kLlama || f == F::kQwen3 || f == F::kQwen3Moe) s.qkv_bias = s.o_bias = attention_bias;
  if (f == F::kQwen2) s.qkv_bias = true;
  if (f == F::kLlama) s.mlp_bias = c.get<bool>("mlp_bias", false);
  s.qk_norm = f == F::kQwen3 || f == F::kQwen3Moe;
  s.tie_word_embeddings = c.get<bool>("tie_word_embeddings", false);
  if (auto pad = c.optional<int64_t>("pad_token_id"); pad && *pad >= 0 && *pad < s.vocab_size)
    s.padding_idx = pad;
  s.sliding_window = read_sliding_windows(c, f, s.num_hidden_layers);
  if (f == F::kMixtral && !c.has("rope_theta")) {  // MixtralConfig.default_theta
    nlohmann::json patched = config;
    patched["rope_theta"] = 1e6;
    s.rope = make_rotary_embedding(ConfigReader(patched, t), s.head_dim);
  } else {
    s.rope = make_rotary_embedding(c, s.head_dim);
  }
  return s;
}

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const LlamaSettings& s)
      : heads_(s.num_attention_heads), kv_heads_(s.num_key_value_heads), head_dim_(s.head_dim) {
    q_proj =
        register_module("q_proj", peft::nn::Linear(s.hidden_size, heads_ * head_dim_, s.qkv_bias));
    k_proj = register_module("k_proj",
                             peft::nn::Linear(s.hidden_size, kv_heads_ * head_dim_, s.qkv_bias));
    v_proj = register_module("v_proj",
                             peft::nn::Linear(s.hidden_size, kv_heads_ * head_dim_, s.qkv_bias));
    o_proj =
        register_module("o_proj", peft::nn::Linear(heads_ * head_dim_, s.hidden_size, s.o_bias));
    if (s.qk_norm) {
      q_norm = register_module("q_norm", RMSNorm(head_dim_, s.rms_norm_eps));
      k_norm = register_module("k_norm", RMSNorm(head_dim_, s.rms_norm_eps));
    }
  }

  // x: (batch, seq, hidden); cos/sin: (batch, seq, head_dim). Appends this layer's k/v to cache
  // when given.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const AttentionMask& allowed, KVCache* cache, size_t layer) {
    const int64_t batch = x.size(0), seq = x.size(1);
    at::Tensor q = q_proj->forward(x).view({batch, seq, heads_, head_dim_});
    at::Tensor k = k_proj->forward(x).view({batch, seq, kv_heads_, head_dim_});
    at::Tensor v = v_proj->forward(x).view({batch, seq, kv_heads_, head_dim_}).transpose(1, 2);
    if (q_norm) {
      q = q_norm->forward(q);
      k = k_norm->forward(k);
    }
    q = apply_rotary(q.transpose(1, 2), cos, sin);  // (batch, heads, seq, head_dim)
    k = apply_rotary(k.transpose(1, 2), cos, sin);  // (batch, kv_heads, seq, head_dim)
    if (cache) {
      if (cache->keys[layer].defined()) {
        k = at::cat({cache->keys[layer], k}, 2);
        v = at::cat({cache->values[layer], v}, 2);
      }
      cache->keys[layer] = k;
      cache->values[layer] = v;
    }
    at::Tensor out =
        eager_attention(q, k, v, allowed, 1.0 / std::sqrt(static_cast<double>(head_dim_)));
    return o_proj->forward(out.transpose(1, 2).reshape({batch, seq, heads_ * head_dim_}));
  }

  peft::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

// SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)).
class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const LlamaSettings& s) {
    gate_proj = register_module("gate_proj",
                                peft::nn::Linear(s.hidden_size, s.intermediate_size, s.mlp_bias));
    up_proj = register_module("up_proj",
                              peft::nn::Linear(s.hidden_size, s.intermediate_size, s.mlp_bias));
    down_proj = register_module("down_proj",
                                peft::nn::Linear(s.intermediate_size, s.hidden_size, s.mlp_bias));
  }
  at::Tensor forward(const at::Tensor& x) {
    return down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x));
  }
  peft::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

// `mlp` is the dense Mlp or, on a sparse layer of a MoE family, a SparseMoeBlock.
class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const LlamaSettings& s, size_t index) {
    self_attn = register_module("self_attn", Attention(s));
    if (s.moe && s.sparse[index]) {
      moe = register_module("mlp", SparseMoeBlock(*s.moe));
    } else {
      mlp = register_module("mlp", Mlp(s));
    }
    input_layernorm = register_module("input_layernorm", RMSNorm(s.hidden_size, s.rms_norm_eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RMSNorm(s.hidden_size, s.rms_norm_eps));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const AttentionMask& allowed, KVCache* cache, size_t layer) {
    at::Tensor h =
        x + self_attn->forward(input_layernorm->forward(x), cos, sin, allowed, cache, layer);
    const at::Tensor y = post_attention_layernorm->forward(h);
    return h + (moe ? moe->forward(y) : mlp->forward(y));
  }
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  SparseMoeBlock moe{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// transformers' LlamaModel: embed_tokens, layers, norm.
class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(const LlamaSettings& s) {
    embed_tokens = register_module("embed_tokens",
                                   peft::nn::Embedding(s.vocab_size, s.hidden_size, s.padding_idx));
    auto list = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < s.num_hidden_layers; ++i) {
      layers.push_back(DecoderLayer(s, static_cast<size_t>(i)));
      list->push_back(layers.back());
    }
    norm = register_module("norm", RMSNorm(s.hidden_size, s.rms_norm_eps));
  }
  peft::nn::Embedding embed_tokens{nullptr};
  std::vector<DecoderLayer> layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

class LlamaForCausalLM : public PretrainedModel {
 public:
  explicit LlamaForCausalLM(LlamaSettings s) : s_(std::move(s)) {
    model_ = register_module("model", Backbone(s_));
    if (s_.tie_word_embeddings) {
      lm_head_ = register_module(
          "lm_head", std::make_shared<peft::nn::LinearImpl>(model_->embed_tokens->weight()));
    } else {
      lm_head_ = register_module(
          "lm_head", std::make_shared<peft::nn::LinearImpl>(s_.hidden_size, s_.vocab_size, false));
    }
  }

  at::Tensor forward(const ForwardInput& input) override;

  ModelTask task() const override { return ModelTask::kCausalLm; }
  int64_t num_hidden_layers() const override { return s_.num_hidden_layers; }
  int64_t vocab_size() const override { return s_.vocab_size; }
  std::string input_embedding_name() const override { return "model.embed_tokens"; }
  std::vector<std::pair<std::string, std::string>> tied_weights() const override {
    if (!s_.tie_word_embeddings) return {};
    return {{"lm_head.weight", "model.embed_tokens.weight"}};
  }
  std::string model_type() const override { return to_string(s_.family); }
  std::string class_name() const override { return detail::class_name(s_.family); }
  std::string parent_library() const override {
    return "transformers.models." + model_type() + ".modeling_" + model_type();
  }
  // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING has no qwen3_moe entry: PEFT then
  // asks for target_modules (or target_parameters alone).
  std::vector<std::string> default_target_modules() const override {
    if (s_.family == LlamaFamily::kQwen3Moe) return {};
    return {"q_proj", "v_proj"};
  }
  void convert_checkpoint(std::map<std::string, at::Tensor>& tensors) const override {
    if (s_.moe) convert_moe_checkpoint(tensors, s_.family, s_.sparse, s_.moe->num_experts);
  }
  std::string output_embedding_name() const override { return "lm_head"; }
  void replicate_layers(const LayerRanges& ranges) override;

 private:
  LlamaSettings s_;
  Backbone model_{nullptr};
  std::shared_ptr<peft::nn::LinearImpl> lm_head_;
};

at::Tensor LlamaForCausalLM::forward(const ForwardInput& input) {
  const at::Tensor& ids = input.input_ids;
  nn::ForwardInputIdsGuard ids_guard(ids);  // aLoRA layers find their invocation sequence in it
  PEFT_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == at::kLong, ShapeMismatchError,
             class_name(), "input_ids must be an int64 tensor (batch, seq)");
  PEFT_CHECK(
      !input.token_type_ids.defined(), UnsupportedError, class_name(),
      "token_type_ids are not used by " << model_type() << " models (hint: leave them undefined)");
  const int64_t batch = ids.size(0), seq = ids.size(1);
  KVCache* cache = input.cache;
  const int64_t cached = cache ? cache->length() : 0;
  if (cache) {
    const auto layers = static_cast<size_t>(s_.num_hidden_layers);
    if (cache->keys.empty()) {
      cache->keys.resize(layers);
      cache->values.resize(layers);
    }
    PEFT_CHECK(cache->keys.size() == layers && cache->values.size() == layers, ShapeMismatchError,
               class_name(),
               "the KV cache has " << cache->keys.size() << " layers; the model has " << layers
                                   << " (hint: one KVCache per model and sequence batch)");
    PEFT_CHECK(cached == 0 || cache->keys.front().size(0) == batch, ShapeMismatchError,
               class_name(),
               "the KV cache holds batch " << cache->keys.front().size(0)
                                           << "; input_ids has batch " << batch);
  }
  const int64_t total = cached + seq;
  const at::Tensor& mask = input.attention_mask;
  at::Tensor position_ids;
  if (mask.defined()) {
    PEFT_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == total,
               ShapeMismatchError, class_name(),
               "attention_mask has shape " << mask.sizes() << "; expected (batch, cached + seq) = ("
                                           << batch << ", " << total << ")");
    // As generate() does: left padding shifts positions so every row's first real token is at
    // position 0.
    position_ids =
        (mask.to(ids.device(), at::kLong).cumsum(-1) - 1).clamp_min(0).narrow(1, cached, seq);
  } else {
    position_ids = at::arange(cached, total, ids.options()).unsqueeze(0).expand({batch, seq});
  }

  at::Tensor h = model_->embed_tokens->forward(ids);
  auto [cos, sin] = rotary_cos_sin(s_.rope, position_ids, h.scalar_type());
  // One mask per distinct sliding window (nullopt = full causal), built on first use.
  std::vector<std::pair<std::optional<int64_t>, AttentionMask>> masks;
  auto allowed_for = [&](const std::optional<int64_t>& window) -> AttentionMask {
    for (const auto& [w, m] : masks) {
      if (w == window) return m;
    }
    masks.emplace_back(
        window, AttentionMask{attention_allowed(batch, seq, cached, mask, window, h.device())});
    return masks.back().second;
  };
  // Gradient checkpointing (transformers turns the cache off for it; here a cache turns it off).
  const bool recompute =
      is_gradient_checkpointing() && is_training() && at::GradMode::is_enabled() && !cache;
  for (size_t i = 0; i < model_->layers.size(); ++i) {
    const AttentionMask allowed = allowed_for(s_.sliding_window[i]);
    if (recompute) {
      h = checkpoint(
          [layer = model_->layers[i].ptr(), cos = cos, sin = sin, allowed](const at::Tensor& x) {
            return layer->forward(x, cos, sin, allowed, nullptr, 0);
          },
          h, trainable_parameters(*model_->layers[i]));
    } else {
      h = model_->layers[i]->forward(h, cos, sin, allowed, cache, i);
    }
  }
  return lm_head_->forward(model_->norm->forward(h));
}

// PEFT replicate_layers: model.layers becomes the concatenation of the ranges; copies share their
// source's parameters. Each copy keeps its source's sliding window (transformers' layers hold their
// attention type / window from construction; PEFT only renumbers layer_idx, which here is the
// position the forward loop passes for the KV cache).
void LlamaForCausalLM::replicate_layers(const LayerRanges& ranges) {
  if (ranges.empty()) return;  // PEFT: an empty layer_replication is falsy, nothing is replicated
  const auto sources = replication_sources(ranges, s_.num_hidden_layers, "model.layers");
  const auto old = as_modules(model_->layers);
  std::vector<DecoderLayer> copies;
  replicate_layer_list(*model_, "layers", "model.layers", old, sources, [&](size_t i) {
    copies.push_back(DecoderLayer(s_, sources[i]));  // same dense / sparse mlp as its source
    return copies.back().ptr();
  });
  model_->layers = std::move(copies);
  std::vector<std::optional<int64_t>> windows;
  std::vector<bool> sparse;
  for (size_t src : sources) {
    windows.push_back(s_.sliding_window[src]);
    sparse.push_back(s_.sparse[src]);
  }
  s_.sliding_window = std::move(windows);
  s_.sparse = std::move(sparse);
  s_.num_hidden_layers = static_cast<int64_t>(sources.size());
  // PEFT sets config.num_hidden_layers. A per-layer layer_types (Qwen2 / Qwen3) must keep one entry
  // per layer (transformers and read_sliding_windows check it): it follows the sources, and is
  // written when windows exist without it (max_window_layers cannot express a replicated order).
  // Divergence from PEFT: PEFT leaves layer_types as it was (then of the old length).
  nlohmann::json patch = {{"num_hidden_layers", s_.num_hidden_layers}};
  const auto config = nlohmann::json::parse(config_json().empty() ? "{}" : config_json());
  const auto old_types = config.value("layer_types", nlohmann::json());
  if (old_types.is_array() && old_types.size() == old.size()) {
    nlohmann::json types = nlohmann::json::array();
    for (size_t src : sources) types.push_back(old_types[src]);
    patch["layer_types"] = std::move(types);
  } else if ((s_.family == LlamaFamily::kQwen2 || s_.family == LlamaFamily::kQwen3) &&
             std::any_of(s_.sliding_window.begin(), s_.sliding_window.end(),
                         [](const auto& w) { return w.has_value(); })) {
    nlohmann::json types = nlohmann::json::array();
    for (const auto& w : s_.sliding_window) {
      types.push_back(w ? "sliding_attention" : "full_attention");
    }
    patch["layer_types"] = std::move(types);
  }
  patch_sparse_layers(s_.family, s_.sparse, patch);
  set_config_json(patched_config_json(config_json(), patch));
}

}  // namespace

std::shared_ptr<PretrainedModel> make_llama(const nlohmann::json& config) {
  return std::make_shared<LlamaForCausalLM>(read_settings(config));
}

}  // namespace peft::models::detail
