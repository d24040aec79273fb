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
  // transformers pads the labels with ignore_index on the right and shifts them left by one, which
  // is the same as dropping the last logit and the first label.
  const int64_t vocab = logits.size(2);
  at::Tensor shift_logits =
      logits.slice(1, 0, logits.size(1) - 1).to(at::kFloat).reshape({-1, vocab});
  at::Tensor shift_labels = labels.slice(1, 1).reshape({-1}).to(at::kLong);
  return at::cross_entropy_loss(shift_logits, shift_labels, {}, at::Reduction::Mean, ignore_index);
}

at::Tensor sequence_classification_loss(const at::Tensor& logits, const at::Tensor& labels) {
  PEFT_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
             ShapeMismatchError, "sequence_classification_loss",
             "logits " << logits.sizes() << " and labels " << labels.sizes()
                       << " do not fit; expected (batch, num_labels) and (batch,)");
  return at::cross_entropy_loss(logits.to(at::kFloat), labels.to(at::kLong));
}

}  // namespace peft::train
