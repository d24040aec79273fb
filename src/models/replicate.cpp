// Layer replication shared by the model families: range validation, parameter sharing between a
// freshly built layer and its source, and the ModuleList swap.
#include "replicate.h"

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>
#include <torch/ordered_dict.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <mutex>
#include <set>
#include <sstream>

#include "attention.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/modules_to_save.h"
#include "peft/lora/param.h"
#include "peft/lora/trainable_tokens.h"

namespace peft::models::detail {
namespace {

constexpr const char* kComponent = "layer_replication";

// LibTorch's register_parameter refuses an existing name and has no way to swap a registered
// tensor; PEFT's clone_module re-registers each parameter (dst.register_parameter(name, param)).
// Module::parameters_ is protected (ParameterDict / ParameterList use it), so a pointer to it,
// formed inside a derived class as the language allows, reaches any module's registry.
class ParameterRegistry : public torch::nn::Module {
 public:
  static torch::OrderedDict<std::string, at::Tensor>& of(torch::nn::Module& m) {
    return m.*(&ParameterRegistry::parameters_);
  }
};

// Points the members a module's forward reads at the tensors now registered. Returns false for a
// module type not known here (its forward might read stale members).
bool rebind_members(torch::nn::Module& copy, torch::nn::Module& source) {
  if (auto* c = dynamic_cast<nn::LoraLayerImpl*>(&copy)) {
    auto& s = dynamic_cast<nn::LoraLayerImpl&>(source);
    c->weight() = s.weight();
    c->bias() = s.bias();
    return true;
  }
  // A ParamModule's forward reads its parameters from the registry (param()): nothing else to
  // point.
  if (dynamic_cast<nn::ParamModuleImpl*>(&copy) != nullptr) return true;
  if (auto* c = dynamic_cast<torch::nn::LayerNormImpl*>(&copy)) {
    auto& s = dynamic_cast<torch::nn::LayerNormImpl&>(source);
    c->weight = s.weight;
    c->bias = s.bias;
    return true;
  }
  if (auto* c = dynamic_cast<RMSNormImpl*>(&copy)) {
    c->weight = dynamic_cast<RMSNormImpl&>(source).weight;
    return true;
  }
  return false;
}

// Restores the default CPU generator's state on destruction.
class CpuRngGuard {
 public:
  CpuRngGuard() : gen_(at::globalContext().defaultGenerator(c10::Device(c10::kCPU))) {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    state_ = gen_.get_state();
  }
  ~CpuRngGuard() {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    gen_.set_state(state_);
  }
  CpuRngGuard(const CpuRngGuard&) = delete;
  CpuRngGuard& operator=(const CpuRngGuard&) = delete;

 private:
  at::Generator gen_;
  at::Tensor state_;
};

// The copy's own random weights were just dropped. glibc keeps such freed heap blocks resident and,
// with the small allocations of the next copy in between, reuses them poorly: measured on a
// 16-copy Llama, resident memory grew by ~70% of the copies' size until the end. Handing them back
// after each copy keeps the transient cost at one layer.
void release_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

void check_no_adapters(torch::nn::Module& layer, const std::string& name) {
  for (const auto& [lname, l] : nn::lora_layers(layer)) {
    const bool bare = l->adapter_names().empty() &&
                      (!l->modules_to_save() || l->modules_to_save()->keys().empty()) &&
                      (!l->trainable_tokens() || l->trainable_tokens()->empty());
    // Divergence from PEFT: PEFT would deep-copy the adapters too (their parameters then shared
    // between the copies); here replication is refused once a layer holds any.
    PEFT_CHECK(bare, UnsupportedError, kComponent,
               "layer \"" << name << (lname.empty() ? "" : ".") << lname
                          << "\" already holds adapters; expected a model without adapters "
                             "(hint: replicate before injecting: pass layer_replication in the "
                             "LoraConfig of get_peft_model, not of a later add_adapter)");
  }
}

}  // namespace

std::vector<size_t> replication_sources(const LayerRanges& ranges, int64_t num_layers,
                                        const std::string& layers_name) {
  std::ostringstream bad;
  int n_bad = 0;
  std::vector<size_t> out;
  for (const auto& [start, end] : ranges) {
    if (start < 0 || start >= end || end > num_layers) {
      bad << (n_bad++ ? ", " : "") << "[" << start << ", " << end << "]";
      continue;
    }
    for (int64_t i = start; i < end; ++i) out.push_back(static_cast<size_t>(i));
  }
  // Divergence from PEFT: PEFT does not validate (an empty or reversed range adds nothing, a
  // negative start counts from the end, an end past the list raises IndexError midway).
  PEFT_CHECK(n_bad == 0, ConfigError, kComponent,
             (n_bad == 1 ? "range " : "ranges ")
                 << bad.str() << " of " << layers_name << " (" << num_layers
                 << " layers): expected [start, end) with 0 <= start < end <= " << num_layers
                 << " (hint: ranges index the original layers; end is exclusive)");
  return out;
}

void share_parameters(torch::nn::Module& copy, torch::nn::Module& source, const std::string& name) {
  const auto copies = copy.named_modules("", /*include_self=*/true);
  const auto sources = source.named_modules("", /*include_self=*/true);
  PEFT_CHECK(copies.size() == sources.size(), Error, kComponent,
             "the copy of \"" << name << "\" has " << copies.size() << " modules; expected "
                              << sources.size() << " like its source");
  for (size_t m = 0; m < sources.size(); ++m) {
    const std::string& sub = sources[m].key();
    const std::string full = name + (sub.empty() ? "" : "." + sub);
    torch::nn::Module& c = *copies[m].value();
    torch::nn::Module& s = *sources[m].value();
    PEFT_CHECK(copies[m].key() == sub && typeid(c) == typeid(s), Error, kComponent,
               "the copy of \"" << full << "\" is \"" << copies[m].key() << "\" of another type");
    auto& registry = ParameterRegistry::of(c);
    const auto own = s.named_parameters(/*recurse=*/false);
    PEFT_CHECK(registry.size() == own.size(), Error, kComponent,
               "the copy of \"" << full << "\" has " << registry.size() << " parameters; expected "
                                << own.size());
    for (const auto& p : own) {
      PEFT_CHECK(registry.contains(p.key()), Error, kComponent,
                 "the copy of \"" << full << "\" has no parameter \"" << p.key() << "\"");
      registry[p.key()] = p.value();
    }
    PEFT_CHECK(own.is_empty() || rebind_members(c, s), Error, kComponent,
               "module \"" << full << "\" (" << c.name()
                           << ") has parameters but no rule to share them (hint: extend "
                              "rebind_members in src/models/replicate.cpp)");
    auto copy_buffers = c.named_buffers(/*recurse=*/false);
    for (const auto& b : s.named_buffers(/*recurse=*/false)) {
      at::Tensor* dst = copy_buffers.find(b.key());
      PEFT_CHECK(dst != nullptr, Error, kComponent,
                 "the copy of \"" << full << "\" has no buffer \"" << b.key() << "\"");
      if (b.value().defined()) dst->set_data(b.value().detach().clone());
    }
  }
}

void replicate_layer_list(torch::nn::Module& parent, const std::string& list_name,
                          const std::string& full_name,
                          const std::vector<std::shared_ptr<torch::nn::Module>>& layers,
                          const std::vector<size_t>& sources,
                          const std::function<std::shared_ptr<torch::nn::Module>(size_t)>& make) {
  std::set<size_t> checked;
  for (size_t src : sources) {
    if (checked.insert(src).second) {
      check_no_adapters(*layers.at(src), full_name + "." + std::to_string(src));
    }
  }
  auto list = torch::nn::ModuleList();
  {
    CpuRngGuard rng;
    for (size_t i = 0; i < sources.size(); ++i) {
      torch::nn::Module& source = *layers.at(sources[i]);
      std::shared_ptr<torch::nn::Module> copy = make(i);
      share_parameters(*copy, source, full_name + "." + std::to_string(sources[i]));
      copy->train(source.is_training());
      list->push_back(std::move(copy));
      release_freed_memory();
    }
  }
  parent.replace_module(list_name, list.ptr());
}

std::string patched_config_json(const std::string& text, const nlohmann::json& patch) {
  if (text.empty()) return text;
  nlohmann::json config = nlohmann::json::parse(text);
  config.merge_patch(patch);
  return config.dump(2);
}

}  // namespace peft::models::detail
