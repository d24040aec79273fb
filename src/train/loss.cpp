#include "peft/train/loss.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "peft/error.h"

namespace peft::train {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per chunk: about 256 K elements, so a chunk's float32 temporaries stay small however large
// the vocabulary.
int64_t chunk_rows(int64_t vocab) { return std::max<int64_t>(1, (int64_t{1} << 18) / vocab); }

// Mean cross-entropy of logits (rows, vocab) against labels (rows; ignore_index rows left out),
// computed in float32 whatever the logits' dtype. at::cross_entropy_loss keeps a full float32
// log_softmax for backward and builds its gradient in two more full-size buffers (a zero-filled
// one for nll_loss, then log_softmax's); a bfloat16 run also keeps a float32 copy of the logits.
// Here forward keeps one float per row (logsumexp) and backward writes the gradient once,
// (softmax - one_hot) * grad / count, chunk by chunk: the same numbers up to float rounding, and
// for a 151,936-token vocabulary most of the loss's time and memory saved (issue 17).
class CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& labels, int64_t ignore_index) {
    const int64_t rows = logits.size(0), vocab = logits.size(1), step = chunk_rows(vocab);
    const at::Tensor valid = labels.ne(ignore_index);
    const at::Tensor target = labels.masked_fill(valid.logical_not(), 0);
    at::Tensor lse = at::empty({rows}, logits.options().dtype(at::kFloat));
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t e = std::min(rows, r + step);
      lse.slice(0, r, e).copy_(at::logsumexp(logits.slice(0, r, e).to(at::kFloat), {1}));
    }
    // gather checks the label range (an index error, as cross_entropy's).
    const at::Tensor picked = logits.gather(1, target.unsqueeze(1)).squeeze(1).to(at::kFloat);
    const at::Tensor count = valid.sum().to(at::kFloat);
    // 0 / 0 = NaN when every label is ignored, as cross_entropy's mean.
    const at::Tensor loss = (lse - picked).mul_(valid).sum().div_(count);
    ctx->save_for_backward({logits, target, valid, lse, count});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    const at::Tensor& target = saved[1];
    const at::Tensor coef =
        saved[2]
            .to(at::kFloat)
            .mul_(grad_outputs.at(0).to(at::kFloat) /
                  saved[4].clamp_min(1));  // per row: grad / count (0 rows: a zero gradient, as
                                           // nll_loss gives when every label is ignored)
    const at::Tensor& lse = saved[3];
    const int64_t rows = logits.size(0), step = chunk_rows(logits.size(1));
    at::Tensor grad = at::empty_like(logits, at::MemoryFormat::Contiguous);
    const bool in_place = grad.scalar_type() == at::kFloat;
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t e = std::min(rows, r + step);
      const at::Tensor c = coef.slice(0, r, e).unsqueeze(1);
      at::Tensor g = in_place ? grad.slice(0, r, e) : at::Tensor();
      if (in_place) {
        at::sub_out(g, logits.slice(0, r, e), lse.slice(0, r, e).unsqueeze(1));
      } else {
        g = logits.slice(0, r, e).to(at::kFloat).sub_(lse.slice(0, r, e).unsqueeze(1));
      }
      g.exp_().mul_(c).scatter_add_(1, target.slice(0, r, e).unsqueeze(1), c.neg());
      if (!in_place) grad.slice(0, r, e).copy_(g);
    }
    return {grad, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

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
  const at::Tensor flat_logits = logits.reshape({-1, vocab});
  const at::Tensor shift_labels =
      at::cat({labels.slice(1, 1).to(at::kLong),
               at::full({labels.size(0), 1}, ignore_index, labels.options().dtype(at::kLong))},
              1)
          .reshape({-1});
  return CrossEntropyFunction::apply(flat_logits, shift_labels, ignore_index);
}

at::Tensor sequence_classification_loss(const at::Tensor& logits, const at::Tensor& labels) {
  PEFT_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
             ShapeMismatchError, "sequence_classification_loss",
             "logits " << logits.sizes() << " and labels " << labels.sizes()
                       << " do not fit; expected (batch, num_labels) and (batch,)");
  return at::cross_entropy_loss(logits.to(at::kFloat), labels.to(at::kLong));
}

}  // namespace peft::train
