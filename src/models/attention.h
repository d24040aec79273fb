// Building blocks of the Llama family (private to the model zoo): RMSNorm, the causal / padding /
// sliding-window mask, and explicit softmax attention with grouped-query heads (LibTorch 1.13 has
// no scaled_dot_product_attention). Counterparts: transformers' LlamaRMSNorm,
// _prepare_4d_causal_attention_mask_with_cache_position and eager_attention_forward + repeat_kv
// (modeling_llama.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>

namespace peft::models::detail {

// y = weight * (x / sqrt(mean(x^2) + eps)), the normalisation computed in float32 and cast back to
// x's dtype before the weight multiply (as transformers). Parameter "weight": (dim,), initialised
// to ones.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Which keys each query may attend to: (batch, 1, seq, cached + seq) bool, true = attend. Query i
// sits at index cached + i of the key timeline and sees keys j <= cached + i, and only keys with
// attention_mask[b, j] != 0 when attention_mask (batch, cached + seq) is defined. With
// sliding_window w, also only keys with cached + i - j < w. Returns an undefined tensor when every
// key is visible (a single-token step without padding or window limit).
at::Tensor attention_allowed(int64_t batch, int64_t seq, int64_t cached,
                             const at::Tensor& attention_mask,
                             std::optional<int64_t> sliding_window, const c10::Device& device);

// One forward's mask, shared by its layers: `allowed` (attention_allowed; undefined = every key
// visible) and the additive float32 bias eager_attention derives from it in its grouped layout,
// built by the first layer that needs it and reused by the others (copies share it).
struct AttentionMask {
  struct GroupedBias {
    at::Tensor
        bias;  // (batch * kv_heads, n_rep * seq, keys): 0 where allowed, float lowest where not
    int64_t kv_heads = 0, n_rep = 0;
  };
  at::Tensor allowed;
  std::shared_ptr<GroupedBias> grouped = std::make_shared<GroupedBias>();
};

// softmax(q k^T * scale, masked) v with q: (batch, heads, seq, head_dim), k, v: (batch, kv_heads,
// keys, head_dim) and heads a multiple of kv_heads (query head h uses key/value head h / (heads /
// kv_heads), as repeat_kv). Scores and softmax run in float32; masked scores are set to float32's
// lowest (finite, so a query with no visible key gets a uniform row instead of NaN, as
// transformers' min-dtype mask). Returns (batch, heads, seq, head_dim).
at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const AttentionMask& mask, double scale);

}  // namespace peft::models::detail
