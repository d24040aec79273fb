// LoRA-GA preprocessing (PEFT src/peft/tuners/lora/loraga.py): gradient estimation through hooks on
// the targeted base weights while the user's train step runs, with a safetensors cache.
#include "peft/init/loraga.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../strings.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

constexpr const char* kComponent = "lora_ga";

using Layer = std::pair<std::string, std::shared_ptr<nn::LoraLayerImpl>>;

std::string cache_key(const std::string& name) { return name + "._peft_loraga_grad"; }

// Sum and count of the gradients that reached one weight. Backward may run hooks on autograd worker
// threads (one per device), hence the mutex.
struct GradSum {
  std::mutex mu;
  at::Tensor sum;
  int64_t count = 0;
};

// Everything estimate_gradients changes, put back on every path out (exceptions from train_step
// included): hooks, the targeted weights' .grad, every parameter's requires_grad and every module's
// training flag.
class GradientGuard {
 public:
  explicit GradientGuard(torch::nn::Module& model) : model_(model) {
    root_training_ = model_.is_training();
    for (const auto& item : model_.named_modules("", /*include_self=*/false)) {
      training_.emplace_back(item.value(), item.value()->is_training());
    }
    for (const auto& p : model_.parameters(/*recurse=*/true))
      requires_grad_.emplace_back(p, p.requires_grad());
  }
  ~GradientGuard() {
    for (auto& [weight, index] : hooks_) weight.remove_hook(index);
    // The gradients live in the accumulators; .grad goes back to what it was before (PEFT sets it
    // to None, which is the same unless the caller had a gradient there). In reverse: a weight
    // shared by two targeted layers was recorded twice, the second time with .grad unset.
    for (auto it = previous_grads_.rbegin(); it != previous_grads_.rend(); ++it)
      it->first.mutable_grad() = it->second;
    for (auto& [param, flag] : requires_grad_) param.set_requires_grad(flag);
    // train() recurses: restoring in pre-order leaves each module with its own earlier flag.
    model_.train(root_training_);
    for (auto& [module, flag] : training_) module->train(flag);
  }
  GradientGuard(const GradientGuard&) = delete;
  GradientGuard& operator=(const GradientGuard&) = delete;

  // Only the targeted weights require grad: PEFT's memory-saving choice (no gradient for anything
  // else).
  void freeze_all() {
    for (auto& [param, flag] : requires_grad_) param.set_requires_grad(false);
  }

  // Makes `weight` a fresh gradient leaf and sums every gradient that reaches it.
  void watch(at::Tensor weight, const std::shared_ptr<GradSum>& acc) {
    previous_grads_.emplace_back(weight, weight.grad());
    weight.mutable_grad() = at::Tensor();
    weight.set_requires_grad(true);
    // Divergence from PEFT: PEFT reads weight.grad once after train_step and divides it by the
    // number of backward calls, which is the mean only if train_step never zeroes the gradient. A
    // hook sees every incoming gradient, so zero_grad between steps inside train_step still gives
    // the mean.
    const unsigned index = weight.register_hook([acc](at::Tensor grad) {
      torch::NoGradGuard no_grad;
      // Sum in at least float32; clone so the sum never aliases the buffer autograd stores as
      // .grad.
      at::Tensor g = grad.detach().to(at::promote_types(grad.scalar_type(), at::kFloat));
      std::lock_guard<std::mutex> lock(acc->mu);
      if (acc->sum.defined()) {
        acc->sum.add_(g);
      } else {
        acc->sum = g.clone(at::MemoryFormat::Contiguous);
      }
      ++acc->count;
    });
    hooks_.emplace_back(std::move(weight), index);
  }

 private:
  torch::nn::Module& model_;
  bool root_training_ = false;
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> training_;
  std::vector<std::pair<at::Tensor, bool>> requires_grad_;
  std::vector<std::pair<at::Tensor, at::Tensor>> previous_grads_;
  std::vector<std::pair<at::Tensor, unsigned>> hooks_;
};

// PEFT estimate_gradients: the mean gradient of every targeted weight over the backward passes of
// train_step, in the weight's stored layout and dtype.
std::vector<at::Tensor> estimate_gradients(torch::nn::Module& model,
                                           const std::vector<Layer>& layers,
                                           const std::function<void()>& train_step) {
  std::vector<std::shared_ptr<GradSum>> sums;
  {
    GradientGuard guard(model);
    guard.freeze_all();
    for (const auto& entry : layers) {
      sums.push_back(std::make_shared<GradSum>());
      guard.watch(entry.second->weight(), sums.back());
    }
    model.train();
    torch::AutoGradMode grad_mode(true);
    train_step();
  }
  std::vector<std::string> unreached;
  std::vector<at::Tensor> grads;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers.size(); ++i) {
    const GradSum& acc = *sums[i];
    if (acc.count == 0) {
      unreached.push_back(layers[i].first);
      continue;
    }
    const at::Tensor& w = layers[i].second->weight();
    grads.push_back((acc.sum / static_cast<double>(acc.count)).to(w.scalar_type()));
  }
  // Divergence from PEFT: PEFT silently leaves such layers without a gradient (they then get the
  // default init); an adapter that was asked for LoRA-GA but cannot get it is almost always a bug
  // in train_step.
  PEFT_CHECK(unreached.empty(), Error, kComponent,
             "no backward pass reached the weight of the targeted layer(s) "
                 << detail::join(unreached, ", ", "\"")
                 << " while train_step ran (hint: train_step must run forward and loss.backward() "
                    "through every "
                    "targeted layer; exclude layers the loss does not depend on)");
  return grads;
}

std::vector<at::Tensor> load_cache(const std::string& path, const std::vector<Layer>& layers) {
  io::SafetensorsFile file(path);
  std::vector<std::string> problems;
  std::vector<at::Tensor> grads;
  for (const auto& [name, layer] : layers) {
    const std::string key = cache_key(name);
    const at::Tensor& w = layer->weight();
    if (!file.contains(key)) {
      problems.push_back("\"" + key + "\" is missing");
      continue;
    }
    at::Tensor g = file.get(key);
    if (g.sizes() != w.sizes()) {
      problems.push_back("\"" + key + "\" has shape " + detail::shape_string(g.sizes()) +
                         ", expected " + detail::shape_string(w.sizes()));
      continue;
    }
    grads.push_back(g.to(w.device()));
  }
  PEFT_CHECK(
      problems.empty(), FormatError, kComponent,
      "cache file \"" << path << "\" does not fit the targeted layers: " << detail::join(problems)
                      << " (hint: it was written for another model or target_modules; delete it to "
                         "re-estimate the gradients)");
  return grads;
}

}  // namespace

void preprocess_loraga(torch::nn::Module& model, const LoraConfig& config,
                       const std::function<void()>& train_step, const std::string& cache_file) {
  PEFT_CHECK(
      config.lora_ga_config.has_value(), ConfigError, kComponent,
      "If you want to use LoRA-GA, please initialize the LoraConfig with "
      "init_lora_weights='lora_ga' and "
      "lora_ga_config=LoraGAConfig(...). (hint: set config.lora_ga_config = peft::LoraGAConfig{})");
  // PEFT 0.20's get_target_modules: targeted nn.Linear and Conv1D modules.
  std::vector<Layer> layers;
  for (auto& entry : find_target_layers(model, config)) {
    if (entry.second->is_linear()) layers.push_back(std::move(entry));
  }
  PEFT_CHECK(!layers.empty(), ConfigError, kComponent,
             "No supported layers found for LoRA-GA initialization. LoRA-GA only supports Linear "
             "and Conv1D "
             "layers. Please ensure your model contains at least one of these layer types in "
             "target_modules.");

  std::error_code ec;
  const bool cached = !cache_file.empty() && std::filesystem::file_size(cache_file, ec) > 0 && !ec;
  std::vector<at::Tensor> grads;
  if (cached) {
    grads = load_cache(cache_file, layers);
  } else {
    PEFT_CHECK(static_cast<bool>(train_step), ConfigError, kComponent,
               "train_step must be specified when no gradient cache exists (hint: pass a callback "
               "that runs "
               "forward and backward on a few training batches, or a cache_file written by an "
               "earlier run)");
    grads = estimate_gradients(model, layers, train_step);
  }
  for (size_t i = 0; i < layers.size(); ++i) layers[i].second->init_data().loraga_grad = grads[i];

  if (!cached && !cache_file.empty()) {
    // Divergence from PEFT: PEFT writes a torch pickle (torch.save); this writes safetensors with
    // PEFT's keys.
    std::vector<std::pair<std::string, at::Tensor>> cache;
    for (size_t i = 0; i < layers.size(); ++i)
      cache.emplace_back(cache_key(layers[i].first), grads[i]);
    const auto parent = std::filesystem::path(cache_file).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    io::save_safetensors(cache_file, cache);
  }
}

}  // namespace peft
