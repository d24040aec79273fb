// A padded batch of token sequences: what the trainer, the data-driven inits (EVA, CorDA, LoRA-GA)
// and the evaluation loops feed a model. A plain data type with no dependency but ATen, so that any
// layer can take one.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace peft::train {

// Right padding with the pad id; attention_mask 0 and label -100 on padding (train::collate builds
// one).
struct Batch {
  at::Tensor input_ids;       // (batch, seq) int64
  at::Tensor attention_mask;  // (batch, seq) int64
  at::Tensor labels;          // causal LM: (batch, seq); classification: (batch,)
  at::Tensor token_type_ids;  // undefined unless an example has them
  int64_t num_tokens = 0;     // non-padding tokens
  int64_t num_label_tokens =
      0;  // tokens whose shifted label counts in the causal-LM loss (classification: batch)
};

}  // namespace peft::train
