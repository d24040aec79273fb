// What a preprocessing step attaches to a layer for a data-driven init: CorDA's decomposition and
// LoRA-GA's averaged gradient (PEFT sets module attributes for these: `eigens` and
// `_peft_loraga_grad`). update_layer reads them for init_lora_weights = "corda" / "lora_ga".
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace peft::nn {

struct LayerInitData {
  // CorDA (peft::preprocess_corda): the r components kept of the context-weighted SVD of the (out,
  // in) weight.
  struct Corda {
    at::Tensor U;  // (out, r)
    at::Tensor S;  // (r,)
    at::Tensor V;  // (in, r)
  };
  std::optional<Corda> corda;
  // LoRA-GA (peft::preprocess_loraga): the weight's gradient averaged over the batches, in the
  // stored weight's layout.
  at::Tensor loraga_grad;
};

}  // namespace peft::nn
