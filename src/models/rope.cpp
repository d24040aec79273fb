// Rotary embeddings. The float32 op sequence mirrors transformers' (modeling_rope_utils.py, 4.48)
// so that inv_freq matches bit for bit: pow(theta, arange / dim) then reciprocal, and for llama3
// the same where / smooth interpolation order.
#include "rope.h"

#include <ATen/ATen.h>
#include <c10/util/MathConstants.h>
#include <torch/types.h>

#include <cmath>

#include "peft/error.h"

namespace peft::models::detail {
namespace {

double rope_number(const nlohmann::json& rope_scaling, const std::string& key) {
  const bool ok = rope_scaling.contains(key) && rope_scaling[key].is_number();
  PEFT_CHECK(ok, ConfigError, "config.json",
             "rope_scaling." << key << " must be a number; got "
                             << (rope_scaling.contains(key) ? rope_scaling[key].dump()
                                                            : std::string("nothing")));
  return rope_scaling[key].get<double>();
}

}  // namespace

RotaryEmbedding make_rotary_embedding(const ConfigReader& config, int64_t head_dim) {
  const double theta = config.get<double>("rope_theta", 10000.0);
  PEFT_CHECK(theta > 0, ConfigError, "config.json", "rope_theta must be positive; got " << theta);
  const double partial = config.get<double>("partial_rotary_factor", 1.0);
  PEFT_CHECK(partial == 1.0, UnsupportedError, "config.json",
             "partial_rotary_factor " << partial
                                      << " is not supported by the Llama family (expected 1.0)");
  PEFT_CHECK(head_dim % 2 == 0, ConfigError, "config.json",
             "head_dim must be even for RoPE; got " << head_dim);

  RotaryEmbedding rope;
  // transformers: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
  at::Tensor exponents =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / head_dim;
  at::Tensor inv_freq = at::reciprocal(at::pow(c10::Scalar(theta), exponents));

  if (!config.has("rope_scaling")) {
    rope.inv_freq = inv_freq;
    return rope;
  }
  const nlohmann::json& scaling = config.json()["rope_scaling"];
  PEFT_CHECK(scaling.is_object(), ConfigError, "config.json",
             "rope_scaling must be null or an object; got " << scaling.dump());
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (scaling.contains(key) && !scaling[key].is_null()) {
      PEFT_CHECK(scaling[key].is_string(), ConfigError, "config.json",
                 "rope_scaling." << key << " must be a string; got " << scaling[key].dump());
      type = scaling[key].get<std::string>();
      break;
    }
  }
  if (type == "default") {
    rope.inv_freq = inv_freq;
  } else if (type == "linear") {
    const double factor = rope_number(scaling, "factor");
    PEFT_CHECK(factor > 0, ConfigError, "config.json",
               "rope_scaling.factor must be positive; got " << factor);
    rope.inv_freq = inv_freq / factor;
  } else if (type == "llama3") {
    const double factor = rope_number(scaling, "factor");
    const double low_freq_factor = rope_number(scaling, "low_freq_factor");
    const double high_freq_factor = rope_number(scaling, "high_freq_factor");
    const double old_context_len = rope_number(scaling, "original_max_position_embeddings");
    PEFT_CHECK(factor > 0, ConfigError, "config.json",
               "rope_scaling.factor must be positive; got " << factor);
    PEFT_CHECK(
        old_context_len > 0, ConfigError, "config.json",
        "rope_scaling.original_max_position_embeddings must be positive; got " << old_context_len);
    PEFT_CHECK(high_freq_factor > low_freq_factor && low_freq_factor > 0, ConfigError,
               "config.json",
               "rope_scaling.high_freq_factor (" << high_freq_factor
                                                 << ") must be greater than low_freq_factor ("
                                                 << low_freq_factor << "), both positive");
    const double low_freq_wavelen = old_context_len / low_freq_factor;
    const double high_freq_wavelen = old_context_len / high_freq_factor;
    at::Tensor wavelen = at::reciprocal(inv_freq) * (2 * c10::pi<double>);
    at::Tensor llama = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
    at::Tensor smooth = (at::reciprocal(wavelen) * old_context_len - low_freq_factor) /
                        (high_freq_factor - low_freq_factor);
    at::Tensor smoothed = at::rsub(smooth, 1) * llama / factor + smooth * llama;
    at::Tensor is_medium =
        at::logical_not(wavelen < high_freq_wavelen) & at::logical_not(wavelen > low_freq_wavelen);
    rope.inv_freq = at::where(is_medium, smoothed, llama);
  } else {
    throw UnsupportedError("config.json",
                           "rope_scaling.rope_type \"" + type +
                               "\" is not supported; supported: default, linear, llama3");
  }
  return rope;
}

std::pair<at::Tensor, at::Tensor> rotary_cos_sin(const RotaryEmbedding& rope,
                                                 const at::Tensor& position_ids,
                                                 c10::ScalarType dtype) {
  // freqs: (batch, seq, head_dim / 2) = position x inv_freq (transformers' K=1 matmul is this exact
  // product).
  at::Tensor inv_freq = rope.inv_freq.to(position_ids.device());
  at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq;
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos();
  at::Tensor sin = emb.sin();
  if (rope.attention_scaling != 1.0) {
    cos = cos * rope.attention_scaling;
    sin = sin * rope.attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace peft::models::detail
