// Text generation with a causal LM of the model zoo: batched, left-padded prompts, one prefill,
// then per-token decoding with the KV cache; greedy or seeded sampling. Counterpart: transformers'
// GenerationMixin.generate with its logits processors (RepetitionPenalty, Temperature, TopK, TopP)
// applied in that order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "peft/models/model.h"

namespace peft {

struct GenerationConfig {
  // Tokens generated per row at most (stop tokens included). Default 20.
  int64_t max_new_tokens = 20;
  // false: greedy (argmax of the processed logits; temperature / top_k / top_p are ignored, as
  // transformers).
  bool do_sample = false;
  // Sampling only: logits / temperature; must be > 0. Default 1 (no change).
  double temperature = 1.0;
  // Sampling only: keep the top_k highest logits (ties at the k-th value kept); 0 disables. Default
  // 50 (transformers).
  int64_t top_k = 50;
  // Sampling only: keep the smallest set of tokens whose probability mass exceeds top_p (at least
  // one); 1 disables.
  double top_p = 1.0;
  // transformers' RepetitionPenaltyLogitsProcessor over the row's prompt + generated tokens
  // (padding excluded): a seen token's logit is divided by the penalty when positive, multiplied
  // when negative. 1 disables; must be > 0.
  double repetition_penalty = 1.0;
  // A row stops after emitting any of these (the stop token is part of its output). Empty: only
  // max_new_tokens.
  std::vector<int64_t> eos_token_ids;
  // Fills the left padding of shorter prompts (masked out, so its value does not change results).
  // Default: the first eos token id, else 0.
  std::optional<int64_t> pad_token_id;
  // Seeds the sampler's std::mt19937_64 (see generate()).
  uint64_t seed = 0;
};

// Generates continuations of `prompts` (token ids, at least one each) as one batch and returns the
// new tokens of every row (stop token included, no padding). Prompts are left-padded with an
// attention mask, so positions restart at 0 on every row's first real token and a batched row
// yields the same tokens as the prompt alone (up to floating-point rounding). Rows finish
// independently; decoding ends when all have finished or after max_new_tokens steps. `on_token(row,
// token)` is called for each new token as soon as it is chosen.
//
// Sampling is reproducible without touching LibTorch's global generator: a local std::mt19937_64
// seeded with `seed` draws one uniform u in [0, 1) per unfinished row per step, in row order, and
// the token is the first index whose cumulative processed probability (computed in double on the
// CPU) exceeds u (inverse-CDF sampling). The same seed, prompts, model and config give the same
// tokens.
//
// Throws UnsupportedError for a model that is not a causal LM, ConfigError for an invalid config
// field and ShapeMismatchError for an empty prompt or a token id outside the vocabulary.
std::vector<std::vector<int64_t>> generate(
    models::PretrainedModel& model, const std::vector<std::vector<int64_t>>& prompts,
    const GenerationConfig& config, std::function<void(size_t row, int64_t token)> on_token = {});

// The processors generate() applies to next-token logits (batch, vocab), in transformers' order:
// repetition penalty over `seen[row]`, then — when config.do_sample — temperature, top-k and top-p
// (filtered entries become -inf). Returns float32 logits; greedy decoding takes their argmax,
// sampling their softmax.
at::Tensor process_logits(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& seen,
                          const GenerationConfig& config);

}  // namespace peft
