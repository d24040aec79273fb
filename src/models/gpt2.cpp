// GPT-2 (GPT2LMHeadModel) built from peft::nn layers under transformers' module names, computing
// what transformers' eager attention computes in float32. Counterpart:
// transformers/models/gpt2/modeling_gpt2.py.
#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "activations.h"
#include "checkpoint.h"
#include "config_reader.h"
#include "families.h"
#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/linear.h"
#include "replicate.h"

namespace peft::models::detail {
namespace {

struct Gpt2Config {
  int64_t vocab_size = 0;
  int64_t n_positions = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_inner = 0;
  Activation activation = Activation::kGeluNew;
  double layer_norm_epsilon = 1e-5;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool reorder_and_upcast_attn = false;
  bool tie_word_embeddings = true;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double resid_pdrop = 0.1;
};

Gpt2Config read_config(const nlohmann::json& json) {
  ConfigReader r(json, "gpt2");
  Gpt2Config c;
  c.vocab_size = r.get<int64_t>("vocab_size", 50257);
  c.n_positions = r.get<int64_t>("n_positions", 1024);
  c.n_embd = r.get<int64_t>("n_embd", 768);
  c.n_layer = r.get<int64_t>("n_layer", 12);
  c.n_head = r.get<int64_t>("n_head", 12);
  c.n_inner = r.get<int64_t>("n_inner", 4 * c.n_embd);
  c.activation = parse_activation(r.get<std::string>("activation_function", "gelu_new"), "gpt2",
                                  "activation_function");
  c.layer_norm_epsilon = r.get<double>("layer_norm_epsilon", 1e-5);
  c.scale_attn_weights = r.get<bool>("scale_attn_weights", true);
  c.scale_attn_by_inverse_layer_idx = r.get<bool>("scale_attn_by_inverse_layer_idx", false);
  c.reorder_and_upcast_attn = r.get<bool>("reorder_and_upcast_attn", false);
  c.tie_word_embeddings = r.get<bool>("tie_word_embeddings", true);
  c.embd_pdrop = r.probability("embd_pdrop", 0.1);
  c.attn_pdrop = r.probability("attn_pdrop", 0.1);
  c.resid_pdrop = r.probability("resid_pdrop", 0.1);
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                                     {"n_positions", c.n_positions},
                                     {"n_embd", c.n_embd},
                                     {"n_layer", c.n_layer},
                                     {"n_head", c.n_head},
                                     {"n_inner", c.n_inner}}) {
    PEFT_CHECK(value > 0, ConfigError, "config.json",
               "gpt2 config field \"" << field << "\" must be positive: " << value);
  }
  PEFT_CHECK(c.n_embd % c.n_head == 0, ConfigError, "config.json",
             "gpt2 config field \"n_embd\" (" << c.n_embd << ") is not divisible by \"n_head\" ("
                                              << c.n_head << ")");
  PEFT_CHECK(c.layer_norm_epsilon > 0, ConfigError, "config.json",
             "gpt2 config field \"layer_norm_epsilon\" must be positive: " << c.layer_norm_epsilon);
  return c;
}

torch::nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

// What every attention layer of one forward shares.
struct AttentionContext {
  at::Tensor causal;         // (seq, total) bool, true = may attend
  at::Tensor additive_mask;  // (batch, 1, 1, total) or undefined
};

class Gpt2AttentionImpl : public torch::nn::Module {
 public:
  Gpt2AttentionImpl(const Gpt2Config& c, int64_t layer_idx)
      : c_(c), layer_idx_(layer_idx), head_dim_(c.n_embd / c.n_head) {
    c_attn = register_module("c_attn", nn::Conv1D(3 * c.n_embd, c.n_embd));
    c_proj = register_module("c_proj", nn::Conv1D(c.n_embd, c.n_embd));
  }

  // x: (batch, seq, embd); past_k / past_v: (batch, heads, cached, head_dim), appended to when
  // given.
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx, at::Tensor* past_k,
                     at::Tensor* past_v) {
    const int64_t B = x.size(0), T = x.size(1), E = c_.n_embd;
    auto heads = [&](const at::Tensor& t) {
      return t.view({B, T, c_.n_head, head_dim_}).transpose(1, 2);
    };
    auto qkv = c_attn->forward(x).split(E, 2);
    at::Tensor q = heads(qkv[0]), k = heads(qkv[1]),
               v = heads(qkv[2]);  // (batch, heads, seq, head_dim)
    if (past_k != nullptr) {
      if (past_k->defined()) {
        k = at::cat({*past_k, k}, 2);
        v = at::cat({*past_v, v}, 2);
      }
      *past_k = k;
      *past_v = v;
    }
    at::Tensor w;
    if (c_.reorder_and_upcast_attn) {  // _upcast_and_reordered_attn: scale folded into a float32
                                       // matmul
      double scale = c_.scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(head_dim_)) : 1.0;
      if (c_.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(layer_idx_ + 1);
      w = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-1, -2)).mul_(scale);
    } else {
      w = at::matmul(q, k.transpose(-1, -2));  // (batch, heads, seq, total)
      if (c_.scale_attn_weights) w = w / std::sqrt(static_cast<double>(head_dim_));
      if (c_.scale_attn_by_inverse_layer_idx) w = w / static_cast<double>(layer_idx_ + 1);
    }
    // transformers: where(causal, w, finfo.min), then + (1 - mask) * finfo.min.
    w = at::where(ctx.causal, w, at::scalar_tensor(dtype_min(w.scalar_type()), w.options()));
    if (ctx.additive_mask.defined()) w = w + ctx.additive_mask;
    w = at::softmax(w, -1).to(v.scalar_type());
    if (c_.attn_pdrop > 0.0) w = at::dropout(w, c_.attn_pdrop, is_training());
    at::Tensor o = at::matmul(w, v).transpose(1, 2).reshape({B, T, E});
    o = c_proj->forward(o);
    return c_.resid_pdrop > 0.0 ? at::dropout(o, c_.resid_pdrop, is_training()) : o;
  }

  nn::Conv1D c_attn{nullptr};
  nn::Conv1D c_proj{nullptr};

 private:
  Gpt2Config c_;
  int64_t layer_idx_;
  int64_t head_dim_;
};
TORCH_MODULE(Gpt2Attention);

class Gpt2MlpImpl : public torch::nn::Module {
 public:
  explicit Gpt2MlpImpl(const Gpt2Config& c) : c_(c) {
    c_fc = register_module("c_fc", nn::Conv1D(c.n_inner, c.n_embd));
    c_proj = register_module("c_proj", nn::Conv1D(c.n_embd, c.n_inner));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = c_proj->forward(activate(c_fc->forward(x), c_.activation));
    return c_.resid_pdrop > 0.0 ? at::dropout(h, c_.resid_pdrop, is_training()) : h;
  }
  nn::Conv1D c_fc{nullptr};
  nn::Conv1D c_proj{nullptr};

 private:
  Gpt2Config c_;
};
TORCH_MODULE(Gpt2Mlp);

class Gpt2BlockImpl : public torch::nn::Module {
 public:
  Gpt2BlockImpl(const Gpt2Config& c, int64_t layer_idx) {
    ln_1 = register_module("ln_1", layer_norm(c.n_embd, c.layer_norm_epsilon));
    attn = register_module("attn", Gpt2Attention(c, layer_idx));
    ln_2 = register_module("ln_2", layer_norm(c.n_embd, c.layer_norm_epsilon));
    mlp = register_module("mlp", Gpt2Mlp(c));
  }
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx, at::Tensor* past_k,
                     at::Tensor* past_v) {
    at::Tensor h = x + attn->forward(ln_1->forward(x), ctx, past_k, past_v);
    return h + mlp->forward(ln_2->forward(h));
  }
  torch::nn::LayerNorm ln_1{nullptr};
  Gpt2Attention attn{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
  Gpt2Mlp mlp{nullptr};
};
TORCH_MODULE(Gpt2Block);

// GPT2Model: the "transformer" submodule.
class Gpt2ModelImpl : public torch::nn::Module {
 public:
  explicit Gpt2ModelImpl(const Gpt2Config& c) {
    wte = register_module("wte", nn::Embedding(c.vocab_size, c.n_embd));
    wpe = register_module("wpe", nn::Embedding(c.n_positions, c.n_embd));
    auto list = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layer; ++i) {
      blocks.push_back(Gpt2Block(c, i));
      list->push_back(blocks.back());
    }
    ln_f = register_module("ln_f", layer_norm(c.n_embd, c.layer_norm_epsilon));
  }
  nn::Embedding wte{nullptr};
  nn::Embedding wpe{nullptr};
  std::vector<Gpt2Block> blocks;
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Gpt2Model);

class Gpt2LMHeadModel : public PretrainedModel {
 public:
  explicit Gpt2LMHeadModel(const Gpt2Config& c) : c_(c) {
    transformer = register_module("transformer", Gpt2Model(c));
    if (c.tie_word_embeddings) {
      lm_head_ = register_module(
          "lm_head", nn::Linear(std::make_shared<nn::LinearImpl>(transformer->wte->weight())));
    } else {
      lm_head_ = register_module("lm_head", nn::Linear(c.n_embd, c.vocab_size, /*bias=*/false));
    }
  }

  // Causal LM logits (batch, seq, vocab). With a cache, input_ids are the new positions only and
  // attention_mask (if any) covers cached + new positions.
  at::Tensor forward(const ForwardInput& in) override {
    nn::ForwardInputIdsGuard ids_guard(
        in.input_ids);  // aLoRA layers find their invocation sequence in it
    const at::Tensor& ids = in.input_ids;
    PEFT_CHECK(ids.defined() && ids.dim() == 2 && !c10::isFloatingType(ids.scalar_type()),
               ShapeMismatchError, "gpt2", "input_ids must be an integer tensor (batch, seq)");
    const int64_t B = ids.size(0), T = ids.size(1);
    KVCache* cache = in.cache;
    int64_t past = 0;
    if (cache != nullptr) {
      if (cache->keys.empty()) {
        cache->keys.resize(static_cast<size_t>(c_.n_layer));
        cache->values.resize(static_cast<size_t>(c_.n_layer));
      }
      PEFT_CHECK(cache->keys.size() == static_cast<size_t>(c_.n_layer) &&
                     cache->values.size() == cache->keys.size(),
                 ShapeMismatchError, "gpt2",
                 "KV cache has " << cache->keys.size() << " layers; the model has " << c_.n_layer
                                 << " (hint: one cache per model, clear() it between sequences)");
      past = cache->length();
      PEFT_CHECK(past == 0 || cache->keys.front().size(0) == B, ShapeMismatchError, "gpt2",
                 "KV cache batch " << cache->keys.front().size(0) << " but input_ids batch " << B);
    }
    const int64_t total = past + T;
    PEFT_CHECK(total <= c_.n_positions, ShapeMismatchError, "gpt2",
               "sequence of " << total << " positions exceeds n_positions " << c_.n_positions);
    const auto device = ids.device();
    const at::Tensor& mask = in.attention_mask;
    at::Tensor positions;
    if (mask.defined()) {
      PEFT_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == total, ShapeMismatchError,
                 "gpt2",
                 "attention_mask has shape " << mask.sizes() << "; expected (" << B << ", " << total
                                             << ") = (batch, cached + new positions)");
      // As generate() does for left padding: positions count attended tokens only; pads get 1.
      const at::Tensor m = mask.to(device, at::kLong);
      positions = (m.cumsum(-1) - 1).masked_fill_(m == 0, 1).slice(1, past, total);
    } else {
      positions = at::arange(past, total, at::TensorOptions().dtype(at::kLong).device(device))
                      .unsqueeze(0)
                      .expand({B, T});
    }
    at::Tensor h = transformer->wte->forward(ids) + transformer->wpe->forward(positions);
    if (c_.embd_pdrop > 0.0) h = at::dropout(h, c_.embd_pdrop, is_training());

    AttentionContext ctx;
    ctx.causal =
        at::ones({T, total}, at::TensorOptions().dtype(at::kBool).device(device)).tril(past);
    if (mask.defined()) {  // (1 - mask) * finfo(dtype).min, (batch, 1, 1, total)
      ctx.additive_mask = (1.0 - mask.to(device, h.scalar_type()))
                              .mul_(dtype_min(h.scalar_type()))
                              .view({B, 1, 1, total});
    }
    // Gradient checkpointing (transformers turns the cache off for it; here a cache turns it off).
    const bool recompute = is_gradient_checkpointing() && is_training() &&
                           at::GradMode::is_enabled() && cache == nullptr;
    for (size_t i = 0; i < transformer->blocks.size(); ++i) {
      if (recompute) {
        h = checkpoint(
            [block = transformer->blocks[i].ptr(), ctx](const at::Tensor& x) {
              return block->forward(x, ctx, nullptr, nullptr);
            },
            h, trainable_parameters(*transformer->blocks[i]));
        continue;
      }
      at::Tensor* k = cache != nullptr ? &cache->keys[i] : nullptr;
      at::Tensor* v = cache != nullptr ? &cache->values[i] : nullptr;
      h = transformer->blocks[i]->forward(h, ctx, k, v);
    }
    h = transformer->ln_f->forward(h);
    return lm_head_->forward(h);
  }

  ModelTask task() const override { return ModelTask::kCausalLm; }
  int64_t num_hidden_layers() const override { return c_.n_layer; }
  int64_t vocab_size() const override { return c_.vocab_size; }
  std::string input_embedding_name() const override { return "transformer.wte"; }
  std::vector<std::pair<std::string, std::string>> tied_weights() const override {
    if (!c_.tie_word_embeddings) return {};
    return {{"lm_head.weight", "transformer.wte.weight"}};
  }

  std::string model_type() const override { return "gpt2"; }
  std::string class_name() const override { return "GPT2LMHeadModel"; }
  std::string parent_library() const override { return "transformers.models.gpt2.modeling_gpt2"; }
  std::vector<std::string> default_target_modules() const override { return {"c_attn"}; }
  std::string output_embedding_name() const override { return "lm_head"; }

  // PEFT replicate_layers on transformer.h. Each copy is built with its new position as layer_idx
  // (PEFT renumbers every submodule's layer_idx, which scale_attn_by_inverse_layer_idx reads).
  // Divergence from PEFT: PEFT's replicate_layers does not find GPT2LMHeadModel's layers (it looks
  // for .model / .layers / .h at the top) and raises ValueError; here GPT-2 is supported.
  void replicate_layers(const LayerRanges& ranges) override {
    if (ranges.empty()) return;  // PEFT: an empty layer_replication is falsy, nothing happens
    const auto sources = replication_sources(ranges, c_.n_layer, "transformer.h");
    const auto old = as_modules(transformer->blocks);
    std::vector<Gpt2Block> copies;
    replicate_layer_list(*transformer, "h", "transformer.h", old, sources, [&](size_t i) {
      copies.push_back(Gpt2Block(c_, static_cast<int64_t>(i)));
      return copies.back().ptr();
    });
    transformer->blocks = std::move(copies);
    c_.n_layer = static_cast<int64_t>(sources.size());
    // PEFT sets config.num_hidden_layers, GPT2Config's alias of n_layer.
    set_config_json(patched_config_json(config_json(), {{"n_layer", c_.n_layer}}));
  }

  Gpt2Model transformer{nullptr};

 private:
  Gpt2Config c_;
  nn::Linear lm_head_{nullptr};  // shares transformer.wte's weight tensor when tied
};

}  // namespace

std::shared_ptr<PretrainedModel> make_gpt2(const nlohmann::json& config) {
  return std::make_shared<Gpt2LMHeadModel>(read_config(config));
}

}  // namespace peft::models::detail
