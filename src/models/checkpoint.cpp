// Gradient checkpointing as a custom autograd Function, and PretrainedModel's switch for it.
#include "checkpoint.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Generator.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <mutex>
#include <unordered_set>
#include <utility>

#include "peft/lora/forward_context.h"
#include "peft/models/model.h"
#include "peft/runtime.h"

namespace peft::models {
namespace detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The default generators of some devices and their states, as torch.random.fork_rng sees them.
struct RngStates {
  std::vector<at::Generator> generators;
  std::vector<at::Tensor> states;

  // CPU always (ops on CPU tensors draw from it whatever the layer's device), plus the default
  // generator of every CUDA device x or params live on.
  static RngStates capture(const at::Tensor& x, const std::vector<at::Tensor>& params) {
    std::vector<c10::Device> devices{c10::Device(c10::kCPU)};
    auto add = [&](const at::Tensor& t) {
      if (t.defined() && t.is_cuda() &&
          std::find(devices.begin(), devices.end(), t.device()) == devices.end())
        devices.push_back(t.device());
    };
    add(x);
    for (const auto& p : params) add(p);
    RngStates out;
    for (const auto& d : devices) {
      at::Generator gen = at::globalContext().defaultGenerator(d);
      std::lock_guard<std::mutex> lock(gen.mutex());  // see ATen's note on generator locking
      out.states.push_back(gen.get_state());
      out.generators.push_back(std::move(gen));
    }
    return out;
  }

  // The current states of the same generators.
  RngStates current() const {
    RngStates out{generators, {}};
    for (auto& gen : out.generators) {
      std::lock_guard<std::mutex> lock(gen.mutex());
      out.states.push_back(gen.get_state());
    }
    return out;
  }

  void restore() {
    for (size_t i = 0; i < generators.size(); ++i) {
      std::lock_guard<std::mutex> lock(generators[i].mutex());
      generators[i].set_state(states[i]);
    }
  }
};

// Sets the generators to `saved` for its lifetime, then puts back the states they had before.
class ForkedRng {
 public:
  explicit ForkedRng(RngStates saved) : before_(saved.current()) { saved.restore(); }
  ~ForkedRng() { before_.restore(); }
  ForkedRng(const ForkedRng&) = delete;
  ForkedRng& operator=(const ForkedRng&) = delete;

 private:
  RngStates before_;
};

// What backward needs besides x, kept in ctx->saved_data as a capsule (IValue holds no
// std::function).
struct CheckpointState : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> fn;
  std::vector<at::Tensor> params;
  RngStates rng;  // at the start of forward
  // The per-call data of the forward (aLoRA's input ids / offsets): the recomputation in backward
  // runs outside the model's forward, so it is reinstated there.
  peft::nn::ForwardContext context;
  // Whether the forward ran under bfloat16 autocast (peft::Bf16Autocast): the recomputation
  // must compute in the same precision, as torch.utils.checkpoint restores the autocast state.
  bool bf16_autocast = false;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // Inputs: x (edge 0), params (edges 1..n), state (not a tensor).
  // The TensorList holds state->params; it is passed only to give them autograd edges.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList /*params*/,
                            const c10::intrusive_ptr<CheckpointState>& state) {
    state->rng = RngStates::capture(x, state->params);
    state->context = peft::nn::current_forward_context();
    state->bf16_autocast =
        at::autocast::is_cpu_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
    ctx->save_for_backward({x});
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return state->fn(x);  // Function::apply runs this with grad mode off
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto blob = ctx->saved_data.at("state").toCapsule();
    auto& state = static_cast<CheckpointState&>(*blob);
    const at::Tensor x = ctx->get_saved_variables().at(0);
    // The engine runs backward with grad mode = create_graph; keep that for the gradients below.
    const bool create_graph = at::GradMode::is_enabled();

    const size_t n = state.params.size();
    variable_list result(n + 2);  // x, params..., state (undefined: not a tensor)
    variable_list wrt;
    std::vector<size_t> slot;
    at::Tensor input = x.detach();
    if (ctx->needs_input_grad(0)) {
      input.requires_grad_(true);
      wrt.push_back(input);
      slot.push_back(0);
    }
    for (size_t i = 0; i < n; ++i) {
      if (!ctx->needs_input_grad(i + 1)) continue;
      wrt.push_back(state.params[i]);
      slot.push_back(i + 1);
    }
    if (wrt.empty()) return result;

    at::Tensor y;
    {
      ForkedRng rng(state.rng);
      peft::nn::ForwardContextGuard context(state.context);
      peft::Bf16Autocast autocast(state.bf16_autocast);
      at::AutoGradMode grad_mode(true);
      y = state.fn(input);
    }
    if (!y.requires_grad()) return result;
    const variable_list grads = torch::autograd::grad({y}, wrt, {grad_outputs.at(0)},
                                                      /*retain_graph=*/create_graph, create_graph,
                                                      /*allow_unused=*/true);
    for (size_t k = 0; k < slot.size(); ++k) result[slot[k]] = grads[k];
    return result;
  }
};

// params that require grad, each tensor once (a tensor given twice would get its gradient twice).
std::vector<at::Tensor> distinct_requiring_grad(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& p : params) {
    if (p.defined() && p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second)
      out.push_back(p);
  }
  return out;
}

void set_layer_checkpointing(const torch::nn::Module& model, bool on) {
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* layers = dynamic_cast<LayerCheckpointing*>(m.get()))
      layers->gradient_checkpointing = on;
  }
}

}  // namespace

at::Tensor checkpoint(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x,
                      const std::vector<at::Tensor>& params) {
  if (!at::GradMode::is_enabled()) return fn(x);
  std::vector<at::Tensor> trainable = distinct_requiring_grad(params);
  if (!x.requires_grad() && trainable.empty()) return fn(x);
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = fn;
  state->params = std::move(trainable);
  return CheckpointFunction::apply(x, at::TensorList(state->params), state);
}

std::vector<at::Tensor> trainable_parameters(const torch::nn::Module& module) {
  return distinct_requiring_grad(module.parameters(/*recurse=*/true));
}

}  // namespace detail

void PretrainedModel::gradient_checkpointing_enable() {
  gradient_checkpointing_ = true;
  detail::set_layer_checkpointing(*this, true);
}

void PretrainedModel::gradient_checkpointing_disable() {
  gradient_checkpointing_ = false;
  detail::set_layer_checkpointing(*this, false);
}

}  // namespace peft::models
