// Gradient (activation) checkpointing for the model zoo's layer loops (private to the model zoo):
// a layer's activations are dropped in forward and recomputed in backward. Counterparts:
// torch.utils.checkpoint.checkpoint (use_reentrant=True) and transformers'
// GradientCheckpointingLayer / PreTrainedModel.gradient_checkpointing_enable.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <vector>

namespace peft::models::detail {

// fn(x) whose intermediate activations are not kept: fn runs without grad in forward (only x is
// saved) and again, with grad, in backward on a detached copy of x; the incoming gradient is then
// propagated through the recomputed graph and handed on to x and to `params`. The default CPU
// generator's state (and that of every CUDA device x or params live on) is saved before forward and
// restored for the recomputation, so dropout masks match, then put back as it was before it.
//
// `params` are the tensors fn uses that may need a gradient (a layer's trainable parameters). They
// are inputs of the autograd node, so the backward runs even when x needs no gradient (layer 0's
// input under LoRA comes from a frozen embedding; PEFT calls enable_input_require_grads for this),
// and their gradients flow into .grad through the graph exactly as without checkpointing. Tensors
// fn captures that are not in `params` (cos/sin, masks) get no gradient.
//
// Without grad mode, or when neither x nor any of params requires grad, this is just fn(x).
// The recomputation sets the global generators' state: run checkpointed training on one thread.
at::Tensor checkpoint(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params = {});

// module's parameters (recursively) that require grad: the `params` of checkpoint() for a layer.
std::vector<at::Tensor> trainable_parameters(const torch::nn::Module& module);

// A submodule that runs a layer loop itself (BERT's encoder) and checkpoints it when this flag is
// set: transformers' `module.gradient_checkpointing` attribute. PretrainedModel::
// gradient_checkpointing_enable / _disable set it on every such submodule.
class LayerCheckpointing {
 public:
  virtual ~LayerCheckpointing() = default;
  bool gradient_checkpointing = false;
};

}  // namespace peft::models::detail
