// Frozen Linear base weights held in bfloat16 for a bf16-autocast run. Under autocast every
// forward casts each frozen float32 weight to bfloat16 and keeps that copy for the backward pass;
// holding the bfloat16 values once instead computes the same numbers with no per-step casts, no
// saved copies, and half the memory of those weights.
#pragma once

#include <cstdint>

namespace peft::models {
class PretrainedModel;
}

namespace peft::train {

struct FrozenBf16Summary {
  int64_t layers = 0;       // Linear layers whose weight is now bfloat16
  int64_t bytes_saved = 0;  // float32 bytes given back
};

// Converts, in place, the weight of every Linear / Conv1D layer that autocast alone consumes: a
// float32 weight that does not require grad, of a layer that is not quantized, has no LoRA
// variant (DoRA and the like read the base weight in float32), no modules_to_save copy and no
// trainable tokens, and whose weight no other module shares (a head tied to the embedding keeps
// float32: the embedding looks its rows up in float32). Biases stay float32. The weights stay
// bfloat16 afterwards, so the model then computes only under autocast (peft::Bf16Autocast): meant
// for runs that keep the adapter alone, as `peft train --bf16` does.
FrozenBf16Summary store_frozen_linear_weights_in_bf16(models::PretrainedModel& model);

}  // namespace peft::train
