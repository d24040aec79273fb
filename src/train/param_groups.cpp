// Parameter groups of the optimizer factories: plain AdamW, LoRA+ (PEFT's loraplus.py) and LoRA-FA
// (lorafa.py).
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>

#include <set>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"
#include "peft/train/optimizer.h"

namespace peft::train {

std::vector<NamedParameter> trainable_parameters(const torch::nn::Module& module) {
  std::vector<NamedParameter> out;
  // A tensor registered under several names (tied embeddings, tied modules_to_save copies,
  // replicated layers' shared biases) is one parameter: PyTorch's named_parameters() de-duplicates,
  // LibTorch's does not.
  std::set<const void*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    if (!seen.insert(item.value().unsafeGetTensorImpl()).second) continue;
    out.push_back({item.key(), item.value()});
  }
  return out;
}

std::unique_ptr<Optimizer> create_adamw_optimizer(const torch::nn::Module& model,
                                                  const AdamWOptions& options) {
  ParamGroup g{.name = "default",
               .params = trainable_parameters(model),
               .lr = options.lr,
               .weight_decay = options.weight_decay};
  PEFT_CHECK(
      !g.params.empty(), ConfigError, "optimizer",
      "the model has no trainable parameters (hint: inject an adapter or pass is_trainable)");
  std::vector<ParamGroup> groups;
  groups.push_back(std::move(g));
  return std::make_unique<AdamW>(std::move(groups), options);
}

namespace {

std::string parent_name(const std::string& name, int levels) {
  std::string out = name;
  for (int i = 0; i < levels; ++i) {
    const auto dot = out.rfind('.');
    if (dot == std::string::npos) return "";
    out.resize(dot);
  }
  return out;
}

}  // namespace

std::unique_ptr<Optimizer> create_loraplus_optimizer(const torch::nn::Module& model,
                                                     const AdamWOptions& options,
                                                     const LoraPlusOptions& plus) {
  // Modules by name, to find which parameters live inside a LoRA Embedding or a LayerNorm.
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    modules[item.key()] = item.value();
  auto module_of = [&](const std::string& name) -> std::shared_ptr<torch::nn::Module> {
    auto it = modules.find(name);
    return it == modules.end() ? nullptr : it->second;
  };
  // transformers' get_parameter_names(model, ALL_LAYERNORM_LAYERS) drops parameters inside
  // nn.LayerNorm; PEFT then drops names containing "bias".
  auto inside_layernorm = [&](const std::string& name) {
    for (std::string p = parent_name(name, 1); !p.empty(); p = parent_name(p, 1)) {
      auto m = module_of(p);
      if (m && std::dynamic_pointer_cast<torch::nn::LayerNormImpl>(m)) return true;
    }
    return false;
  };
  ParamGroup a{.name = "groupA", .lr = options.lr, .weight_decay = options.weight_decay};
  ParamGroup emb{
      .name = "embedding", .lr = plus.loraplus_lr_embedding, .weight_decay = options.weight_decay};
  ParamGroup b{.name = "groupB",
               .lr = options.lr * plus.loraplus_lr_ratio,
               .weight_decay = options.weight_decay};
  ParamGroup b_nd{
      .name = "groupB_no_decay", .lr = options.lr * plus.loraplus_lr_ratio, .weight_decay = 0.0};
  for (auto& np : trainable_parameters(model)) {
    auto owner = std::dynamic_pointer_cast<nn::LoraLayerImpl>(module_of(parent_name(np.name, 2)));
    if (owner && owner->kind() == nn::LayerKind::kEmbedding) {
      emb.params.push_back(std::move(np));
    } else if (np.name.find("lora_B") != std::string::npos || np.param.dim() == 1) {
      const bool decay = !inside_layernorm(np.name) && np.name.find("bias") == std::string::npos;
      (decay ? b : b_nd).params.push_back(std::move(np));
    } else {
      a.params.push_back(std::move(np));
    }
  }
  PEFT_CHECK(!a.params.empty() || !emb.params.empty() || !b.params.empty() || !b_nd.params.empty(),
             ConfigError, "optimizer",
             "the model has no trainable parameters (hint: inject an adapter first)");
  std::vector<ParamGroup> groups{std::move(a), std::move(emb), std::move(b), std::move(b_nd)};
  return std::make_unique<AdamW>(std::move(groups), options);
}

std::unique_ptr<Optimizer> create_lorafa_optimizer(PeftModel& model, const AdamWOptions& options) {
  const std::string& adapter = model.active_adapter();
  std::vector<LoraFaOptimizer::Pair> pairs;
  for (auto& [layer_name, layer] : nn::lora_layers(model.base_model())) {
    if (!layer->has_adapter(adapter)) continue;
    at::Tensor a, b;
    std::string a_key, b_key;
    for (auto& [key, t] : layer->adapter_tensors(adapter)) {
      if (key == "lora_A.weight" || key == "lora_embedding_A") a = t, a_key = key;
      if (key == "lora_B.weight" || key == "lora_embedding_B") b = t, b_key = key;
    }
    if (!a.defined() || !b.defined()) continue;
    auto full = [&](const std::string& key) {
      const auto dot = key.find('.');
      return dot == std::string::npos
                 ? layer_name + "." + key + "." + adapter
                 : layer_name + "." + key.substr(0, dot) + "." + adapter + key.substr(dot);
    };
    a.set_requires_grad(false);
    pairs.push_back({full(a_key), full(b_key), a, b, layer->scaling(adapter)});
  }
  PEFT_CHECK(
      !pairs.empty(), ConfigError, "optimizer",
      "LoRA-FA needs LoRA layers of the active adapter \"" + adapter + "\"; none were found");
  ParamGroup g{.name = "default",
               .params = trainable_parameters(model.base_model()),
               .lr = options.lr,
               .weight_decay = options.weight_decay};
  std::vector<ParamGroup> groups;
  groups.push_back(std::move(g));
  // PEFT's create_lorafa_optimizer passes neither eps nor betas: LoraFAOptimizer's defaults (1e-6,
  // (0.9, 0.999)).
  AdamWOptions fa = options;
  fa.eps = 1e-6;
  fa.beta1 = 0.9;
  fa.beta2 = 0.999;
  return std::make_unique<LoraFaOptimizer>(std::move(groups), std::move(pairs), fa);
}

}  // namespace peft::train
