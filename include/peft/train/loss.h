// Training losses exactly as transformers computes them (ForCausalLMLoss, sequence classification).
#pragma once

#include <ATen/core/Tensor.h>

namespace peft::train {

// transformers' causal-LM loss: logits (batch, seq, vocab) predict labels shifted left by one;
// positions whose label is -100 are ignored; the mean cross-entropy (computed in float32) over the
// remaining positions.
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels,
                          int64_t ignore_index = -100);

// Sequence classification (num_labels > 1, integer labels): mean cross-entropy of logits (batch,
// num_labels).
at::Tensor sequence_classification_loss(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace peft::train
