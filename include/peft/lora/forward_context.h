// Per-call data that PEFT hands its layers through forward pre-hooks (alora_offsets, later
// adapter_names), kept here in a thread-local context that model forwards and generate() set with
// RAII guards. PEFT counterparts: PeftModel._enable_peft_forward_hooks,
// variants.calculate_alora_offsets.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace peft::nn {

// How a layer computes a mixed batch: kGathered groups the rows by adapter and runs one batched
// product for A and one for B over all groups (Linear, Embedding; other layers loop); kLoop is
// PEFT's sub-batch loop.
enum class MixedBatchKernel { kGathered, kLoop };

struct ForwardContext {
  // The token ids of the running forward (batch, seq), set by the model zoo's causal LMs (and
  // encoders) unless a caller set them first. aLoRA layers compute their offsets from them when
  // alora_offsets is not set.
  at::Tensor input_ids;
  // aLoRA offsets per batch row, as PEFT's calculate_alora_offsets returns them: seq_len - (start
  // of the last occurrence of the invocation sequence), or nullopt when a row has none. Set
  // explicitly by generate() so that decoding steps (one new token each) keep the offsets computed
  // at prefill.
  std::optional<std::vector<std::optional<int64_t>>> alora_offsets;
  // PEFT's adapter_names forward argument: the one adapter of each batch row ("__base__": none).
  // Set through MixedBatchGuard (peft/lora/mixed_batch.h), which checks the names.
  std::optional<std::vector<std::string>> adapter_names;
  MixedBatchKernel mixed_batch_kernel = MixedBatchKernel::kGathered;
};

// The context of the calling thread (empty outside any guard).
const ForwardContext& current_forward_context();

// Installs `context` for the calling thread until destruction, then restores the previous one.
class [[nodiscard]] ForwardContextGuard {
 public:
  explicit ForwardContextGuard(ForwardContext context);
  ~ForwardContextGuard();
  ForwardContextGuard(const ForwardContextGuard&) = delete;
  ForwardContextGuard& operator=(const ForwardContextGuard&) = delete;

 private:
  ForwardContext previous_;
};

// Used by model forwards: sets input_ids for the call when the current context has none (keeps the
// rest).
class [[nodiscard]] ForwardInputIdsGuard {
 public:
  explicit ForwardInputIdsGuard(const at::Tensor& input_ids);
  ~ForwardInputIdsGuard();
  ForwardInputIdsGuard(const ForwardInputIdsGuard&) = delete;
  ForwardInputIdsGuard& operator=(const ForwardInputIdsGuard&) = delete;

 private:
  bool installed_ = false;
};

// PEFT's calculate_alora_offsets for one invocation sequence: per row of input_ids (batch, seq),
// seq_len - p where p is the start of the LAST full occurrence of `invocation_tokens`; nullopt when
// it does not occur.
std::vector<std::optional<int64_t>> calculate_alora_offsets(
    const at::Tensor& input_ids, const std::vector<int64_t>& invocation_tokens);

// The aLoRA position mask of a layer output `like` (batch, T, ...) or (batch, features) (T = 1): 1
// where the adapter acts (t >= T - min(offset, T)), 0 elsewhere, shaped (batch, T, 1) / (batch, 1),
// on like's device and dtype. Offsets come from the current context (explicit alora_offsets, else
// computed from its input_ids and `invocation_tokens`); rows without an offset, or no context at
// all, get 0 everywhere (PEFT: no adaptation).
at::Tensor alora_position_mask(const at::Tensor& like,
                               const std::vector<int64_t>& invocation_tokens);

}  // namespace peft::nn
