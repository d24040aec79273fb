// RMSNorm, attention masks and explicit attention for the Llama family.
#include "attention.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <limits>

#include "peft/error.h"

namespace peft::models::detail {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) const {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps_);
  return weight * h.to(x.scalar_type());
}

at::Tensor attention_allowed(int64_t batch, int64_t seq, int64_t cached,
                             const at::Tensor& attention_mask,
                             std::optional<int64_t> sliding_window, const c10::Device& device) {
  const int64_t total = cached + seq;
  const bool window_limits = sliding_window && total > *sliding_window;
  if (!attention_mask.defined() && seq == 1 && !window_limits) return {};
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q_idx = at::arange(cached, total, opts).unsqueeze(1);  // (seq, 1)
  at::Tensor k_idx = at::arange(total, opts).unsqueeze(0);          // (1, total)
  at::Tensor allowed = k_idx <= q_idx;                              // (seq, total)
  if (window_limits) allowed = allowed & ((q_idx - k_idx) < *sliding_window);
  allowed = allowed.view({1, 1, seq, total});
  if (attention_mask.defined()) {
    allowed = allowed & (attention_mask.to(device) != 0).view({batch, 1, 1, total});
  } else {
    allowed = allowed.expand({batch, 1, seq, total});
  }
  return allowed;
}

at::Tensor eager_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const AttentionMask& mask, double scale) {
  const at::Tensor& allowed = mask.allowed;
  const int64_t batch = q.size(0), heads = q.size(1), seq = q.size(2), head_dim = q.size(3);
  const int64_t kv_heads = k.size(1), keys = k.size(2);
  PEFT_CHECK(kv_heads > 0 && heads % kv_heads == 0, ShapeMismatchError, "attention",
             heads << " query heads are not a multiple of " << kv_heads << " key/value heads");
  const int64_t n_rep = heads / kv_heads;
  // The query heads that share a key/value head, stacked: (batch * kv_heads, n_rep * seq,
  // head_dim). One batched GEMM per kv head instead of materialising repeat_kv's copies; the sums
  // are the same.
  const at::Tensor q3 = q.reshape({batch * kv_heads, n_rep * seq, head_dim});
  const at::Tensor kt = k.reshape({batch * kv_heads, keys, head_dim}).transpose(1, 2);
  const at::Tensor v3 = v.reshape({batch * kv_heads, keys, head_dim});
  at::Tensor scores;  // float32 (batch * kv_heads, n_rep * seq, keys)
  if (allowed.defined() && q.scalar_type() == at::kFloat) {
    // The mask as an additive bias (0 where allowed, lowest where not) that the GEMM adds while it
    // scales: scores = bias + scale * q k^T (baddbmm, beta = 1, alpha = scale). No separate scale
    // pass, no in-place fill of a view (whose backward copies the whole scores tensor). lowest +
    // any score of magnitude below 1e31 rounds back to lowest, so masked scores are exactly what
    // masked_fill gives, and allowed ones are the same product as (q k^T) * scale.
    // Built once per forward (every layer of a model has the same head grouping) and shared.
    AttentionMask::GroupedBias& g = *mask.grouped;
    if (!g.bias.defined() || g.kv_heads != kv_heads || g.n_rep != n_rep ||
        g.bias.device() != q.device()) {
      g.bias = at::zeros(allowed.sizes(), q.options())
                   .masked_fill_(allowed.logical_not(), std::numeric_limits<float>::lowest())
                   .unsqueeze(1)  // (batch, 1, 1, seq, keys)
                   .expand({batch, kv_heads, n_rep, seq, keys})
                   .reshape({batch * kv_heads, n_rep * seq, keys});
      g.kv_heads = kv_heads;
      g.n_rep = n_rep;
    }
    scores = at::baddbmm(g.bias, q3, kt, /*beta=*/1.0, /*alpha=*/scale);
  } else {
    // Half precision: the product in q's dtype, then scale and mask in float32.
    scores = at::bmm(q3, kt).to(at::kFloat) * scale;
    if (allowed.defined()) {
      scores =
          scores.view({batch, kv_heads, n_rep, seq, keys})
              .masked_fill(allowed.unsqueeze(1).logical_not(), std::numeric_limits<float>::lowest())
              .view({batch * kv_heads, n_rep * seq, keys});
    }
  }
  const at::Tensor probs = at::softmax(scores, -1).to(v.scalar_type());
  return at::bmm(probs, v3).view({batch, heads, seq, head_dim});
}

}  // namespace peft::models::detail
