#include "peft/train/loss.h"

#include <ATen/ATen.h>

#include "peft/error.h"

namespace peft::train {

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels,
                          int64_t ignore_index) {
  PEFT_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                 logits.size(1) == labels.size(1),
             ShapeMismatchError, "causal_lm_loss",
             "logits " << logits.sizes() << " and labels " << labels.sizes()
                       << " do not fit; expected (batch, seq, vocab) and (batch, seq)");
  // transformers (ForCausalLMLoss) pads the labels with ignore_index on the right and shifts them
  // left by one: position i predicts label i + 1 and the last position predicts nothing. Done that
  // way here too, so the logits are used in place (a view, not a copy without their last position,
  // whose backward would also zero-fill a full-size gradient).
  const int64_t vocab = logits.size(2);
  const at::Tensor flat_logits = logits.to(at::kFloat).reshape({-1, vocab});
  const at::Tensor shift_labels =
      at::cat({labels.slice(1, 1).to(at::kLong),
               at::full({labels.size(0), 1}, ignore_index, labels.options().dtype(at::kLong))},
              1)
          .reshape({-1});
  return at::cross_entropy_loss(flat_logits, shift_labels, {}, at::Reduction::Mean, ignore_index);
}

at::Tensor sequence_classification_loss(const at::Tensor& logits, const at::Tensor& labels) {
  PEFT_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
             ShapeMismatchError, "sequence_classification_loss",
             "logits " << logits.sizes() << " and labels " << labels.sizes()
                       << " do not fit; expected (batch, num_labels) and (batch,)");
  return at::cross_entropy_loss(logits.to(at::kFloat), labels.to(at::kLong));
}

}  // namespace peft::train
