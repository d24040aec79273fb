// Text generation with a causal LM of the model zoo: batched, left-padded prompts, one prefill,
// then per-token decoding with the KV cache; greedy or seeded sampling. Counterpart: transformers'
// GenerationMixin.generate with its logits processors (RepetitionPenalty, Temperature, TopK, TopP)
// applied in that order, and PeftModelForCausalLM.generate's aLoRA offsets
// (variants.get_alora_offsets_for_generate). A prompt prefix can be prefilled once (prefill()) and
// its KV cache reused (transformers' past_key_values).
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
  // PEFT's generate(..., adapter_names=[...]): one adapter per prompt ("__base__": the base model),
  // run as one mixed batch (peft/lora/mixed_batch.h). Empty: the model's active adapters for every
  // row.
  std::vector<std::string> adapter_names;
};

// The KV cache of the first tokens of each prompt ("prefix"), computed once by prefill() and reused
// by any number of generate() calls (the cache is copied, never modified). aLoRA's point: the cache
// of the tokens before the invocation sequence is the base model's, so a prefix prefilled with the
// adapters disabled (or by another aLoRA adapter) serves an aLoRA generation unchanged. A plain
// LoRA adapter acts on every position, so its prefix cache differs from the base model's and must
// be computed with that adapter active.
struct PrefixCache {
  // The cached prompt prefix of every row (each at least one token).
  std::vector<std::vector<int64_t>> tokens;
  // One entry per layer, (batch, kv_heads, longest prefix, head_dim): rows left-padded.
  models::KVCache cache;
  // (batch, longest prefix) int64 1 (token) / 0 (padding); undefined when no row is padded.
  at::Tensor attention_mask;
  int64_t length() const { return cache.length(); }
};

// Runs `model` over `prefixes` (token ids, at least one each; left-padded batch) and returns their
// KV cache, with the model as it is: call it inside PeftModel::disable_adapter() for the base
// model's cache (an active aLoRA adapter whose invocation sequence is not in the prefixes gives the
// same). Throws like generate() (no GenerationConfig is involved).
PrefixCache prefill(models::PretrainedModel& model,
                    const std::vector<std::vector<int64_t>>& prefixes);

// Generates continuations of `prompts` (token ids, at least one each) as one batch and returns the
// new tokens of every row (stop token included, no padding). Prompts are left-padded with an
// attention mask, so positions restart at 0 on every row's first real token and a batched row
// yields the same tokens as the prompt alone (up to floating-point rounding). Rows finish
// independently; decoding ends when all have finished or after max_new_tokens steps. `on_token(row,
// token)` is called for each new token as soon as it is chosen.
//
// aLoRA: when an adapter with alora_invocation_tokens is active (enabled) in the model's LoRA
// layers, every row's offset (PEFT's calculate_alora_offsets: prompt length minus the start of the
// last occurrence of the invocation sequence, so left padding does not change it) is computed once
// from the prompt and kept for the whole call: the prefill adapts the invocation sequence and what
// follows, each decoded token is adapted (PEFT: o = min(offset, T) with T = 1). Throws ConfigError
// naming the rows whose prompt lacks the invocation sequence, and UnsupportedError when active
// aLoRA adapters have different invocation sequences. Offsets the caller already installed with an
// nn::ForwardContextGuard (PEFT's alora_offsets argument) are used as given. Without an active
// aLoRA adapter nothing changes.
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

// generate() from a prefilled prefix: prompts[row] must start with prefix.tokens[row] and hold at
// least one more token; only the rest is run through the model (its positions follow the prefix's).
// The result equals generate(model, prompts, ...) when the prefix cache is what the model in its
// current state computes for the prefixes (up to floating-point rounding): always with the same
// adapters active, and with a base-model cache when the active adapter is an aLoRA adapter whose
// invocation sequence lies after the prefix. Throws ShapeMismatchError when the prompts do not
// extend the prefixes or the cache does not match them, and as generate().
std::vector<std::vector<int64_t>> generate(
    models::PretrainedModel& model, const PrefixCache& prefix,
    const std::vector<std::vector<int64_t>>& prompts, const GenerationConfig& config,
    std::function<void(size_t row, int64_t token)> on_token = {});

// The processors generate() applies to next-token logits (batch, vocab), in transformers' order:
// repetition penalty over `seen[row]`, then — when config.do_sample — temperature, top-k and top-p
// (filtered entries become -inf). Returns float32 logits; greedy decoding takes their argmax,
// sampling their softmax.
at::Tensor process_logits(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& seen,
                          const GenerationConfig& config);

}  // namespace peft
