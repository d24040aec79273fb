// Rotary position embeddings of the Llama family (private to the model zoo).
// Counterparts: transformers' LlamaRotaryEmbedding, ROPE_INIT_FUNCTIONS (modeling_rope_utils.py)
// and apply_rotary_pos_emb / rotate_half (modeling_llama.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <utility>

#include "config_reader.h"

namespace peft::models::detail {

struct RotaryEmbedding {
  // (head_dim / 2,) float32 on the CPU. Deliberately not a registered buffer: it is no part of the
  // state dict and stays float32 whatever dtype the model is cast to (forward moves it to the
  // activations' device).
  at::Tensor inv_freq;
  // cos / sin multiplier (transformers' attention_scaling; 1 for default, linear and llama3).
  double attention_scaling = 1.0;
};

// inv_freq = 1 / rope_theta^(arange(0, head_dim, 2) / head_dim), computed in float32, then adjusted
// by config.rope_scaling: null / {"rope_type": "default"}, {"rope_type": "linear", "factor"} or
// {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
// "original_max_position_embeddings"} (the legacy key "type" is accepted, as in transformers).
// Other rope types throw UnsupportedError, bad fields ConfigError.
RotaryEmbedding make_rotary_embedding(const ConfigReader& config, int64_t head_dim);

// cos, sin: (batch, seq, head_dim) in `dtype`, for position_ids (batch, seq). The angles are
// computed in float32 (as transformers does under autocast-disabled) and cast afterwards.
std::pair<at::Tensor, at::Tensor> rotary_cos_sin(const RotaryEmbedding& rope,
                                                 const at::Tensor& position_ids,
                                                 c10::ScalarType dtype);

// x * cos + rotate_half(x) * sin with x: (batch, heads, seq, head_dim) and cos/sin: (batch, seq,
// head_dim); rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]).
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace peft::models::detail
