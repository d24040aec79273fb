// Arrow setup (PEFT tuners/lora/arrow.py: create_arrow_model,
// check_loaded_lora_compatibility_arrow, ensure_adapters_target_linear_layers_only): load task /
// general adapters, check them, add the router.
#include "peft/arrow.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "../strings.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/peft_model.h"

namespace peft {
namespace {

// Python's repr of a list of str: ['a', 'b'].
std::string py_list(const std::vector<std::string>& items) {
  std::vector<std::string> reprs;
  for (const auto& s : items) reprs.push_back(detail::python_str_repr(s));
  return "[" + detail::join(reprs) + "]";
}

// Python's repr of (A.shape, B.shape): (torch.Size([4, 10]), torch.Size([20, 4])).
std::string py_shapes(const std::pair<std::vector<int64_t>, std::vector<int64_t>>& s) {
  auto size = [](const std::vector<int64_t>& v) {
    std::string out = "torch.Size([";
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out += ", ";
      out += std::to_string(v[i]);
    }
    return out + "])";
  };
  return "(" + size(s.first) + ", " + size(s.second) + ")";
}

std::string short_name(const std::string& full_name) {
  const auto dot = full_name.rfind('.');
  return dot == std::string::npos ? full_name : full_name.substr(dot + 1);
}

// PEFT _resolve_adapter_source, local folders only.
void check_adapter_source(const std::string& path) {
  namespace fs = std::filesystem;
  // Divergence from PEFT: "user/repo[/subfolder]" Hub ids are not resolved (no Hub access here).
  PEFT_CHECK(
      fs::is_directory(path), UnsupportedError, "create_arrow_model",
      "'" << path
          << "' is not a local adapter folder; loading adapters from the Hugging Face Hub is not "
             "supported (hint: download the adapter and pass its folder)");
  PEFT_CHECK(fs::is_regular_file(fs::path(path) / "adapter_config.json"), ConfigError,
             "create_arrow_model",
             "Local adapter path '" << path << "' does not contain 'adapter_config.json'.");
}

}  // namespace

ArrowCompatibility check_loaded_lora_compatibility_arrow(
    PeftModel& model, const std::vector<std::string>& adapter_names) {
  struct Seen {
    std::optional<int64_t> r;
    std::optional<std::pair<std::vector<int64_t>, std::vector<int64_t>>> shapes;
    std::set<std::string> modules;
  };
  auto none_or = [](const std::optional<int64_t>& r) {
    return r ? std::to_string(*r) : std::string("None");
  };
  auto shapes_or = [](const auto& s) { return s ? py_shapes(*s) : std::string("None"); };
  const auto layers = nn::lora_layers(model.base_model());
  std::optional<Seen> reference;
  for (const auto& name : adapter_names) {
    model.peft_config(name);  // AdapterNotFoundError for an unknown name
    Seen cur;
    for (const auto& [full_name, layer] : layers) {
      if (!layer->has_adapter(name)) continue;
      at::Tensor A, B;
      for (auto& [key, t] : layer->adapter_tensors(name)) {
        if (key == "lora_A.weight") A = t;
        if (key == "lora_B.weight") B = t;
      }
      // PEFT looks at module.lora_A only: Embedding adapters (lora_embedding_A) are not seen here.
      if (!A.defined() || !B.defined()) continue;
      cur.modules.insert(short_name(full_name));
      // As in PEFT, the last layer holding the adapter sets r and the shapes that are compared.
      cur.r = A.size(0);
      cur.shapes = std::make_pair(A.sizes().vec(), B.sizes().vec());
    }
    if (!reference) {
      reference = cur;
      continue;
    }
    PEFT_CHECK(
        cur.r == reference->r, ConfigError, "create_arrow_model",
        "[" << name << "] rank mismatch: " << none_or(cur.r) << " != " << none_or(reference->r));
    PEFT_CHECK(cur.shapes == reference->shapes, ConfigError, "create_arrow_model",
               "[" << name << "] shape mismatch: " << shapes_or(cur.shapes)
                   << " != " << shapes_or(reference->shapes));
    if (cur.modules != reference->modules) {
      const std::vector<std::string> mine(cur.modules.begin(), cur.modules.end());
      const std::vector<std::string> ref(reference->modules.begin(), reference->modules.end());
      throw ConfigError("create_arrow_model",
                        "[" + name + "] target_modules mismatch:\n  this adapter -> " +
                            py_list(mine) + "\n  reference   -> " + py_list(ref));
    }
  }
  PEFT_CHECK(reference && reference->r, ConfigError, "create_arrow_model",
             "the adapters ["
                 << detail::join(adapter_names)
                 << "] hold no LoRA factors on any Linear-like layer (hint: Arrow routes between "
                    "adapters on Linear layers)");
  ArrowCompatibility out;
  out.target_modules.assign(reference->modules.begin(),
                            reference->modules.end());  // sorted (std::set)
  out.r = static_cast<int>(*reference->r);
  return out;
}

void ensure_adapters_target_linear_layers_only(PeftModel& model,
                                               const std::vector<std::string>& adapter_names) {
  std::vector<std::string> lines;
  for (const auto& [full_name, layer] : nn::lora_layers(model.base_model())) {
    for (const auto& name : adapter_names) {
      if (!layer->has_adapter(name)) continue;
      // Divergence from PEFT: PEFT only inspects modules whose lora_A holds the adapter, so an
      // adapter on an Embedding (lora_embedding_A) slips through and fails later with an unrelated
      // error; it is listed here.
      const auto kind = layer->kind();
      const bool linear_like = kind == nn::LayerKind::kLinear || kind == nn::LayerKind::kConv1D ||
                               kind == nn::LayerKind::kConv1d;
      if (!linear_like) {
        lines.push_back("  - adapter '" + name + "' on module '" + full_name + "' of type " +
                        nn::to_string(kind));
      }
    }
  }
  if (lines.empty()) return;
  // PEFT raises TypeError; here the closest type is UnsupportedError.
  throw UnsupportedError(
      "create_arrow_model",
      "LoRA adapters must only target Linear-like layers (nn.Linear, nn.Conv1d, HF Conv1D, or "
      "bitsandbytes.nn.Linear4bit). Found:\n" +
          detail::join(lines, "\n"));
}

void add_arrow_router(PeftModel& model, ArrowConfig config) {
  PEFT_CHECK(
      !config.task_adapter_names.empty(), ConfigError, "add_arrow_router",
      "arrow_config.task_adapter_names is empty (hint: name the task adapters to route between)");
  if (config.use_gks) {
    PEFT_CHECK(!config.gks_adapter_names.empty(), ConfigError, "add_arrow_router",
               "You should provide general LoRA paths if you want to use GenKnowSub.");
  } else {
    config.gks_adapter_names.clear();  // PEFT: arrow_config.gks_adapter_names = [] without use_gks
  }
  std::vector<std::string> names = config.task_adapter_names;
  names.insert(names.end(), config.gks_adapter_names.begin(), config.gks_adapter_names.end());
  const ArrowCompatibility compat = check_loaded_lora_compatibility_arrow(model, names);
  ensure_adapters_target_linear_layers_only(model, names);

  LoraConfig router;
  router.r = compat.r;
  router.target_modules = compat.target_modules;
  router.arrow_config = config;
  router.validate();  // ArrowConfig: top_k > 0, router_temperature > 0

  // PEFT 0.20 resolves the variant per layer type: only Linear (and GPT-2 Conv1D, a Linear there)
  // has an Arrow variant, Conv1d supports DoRA only, so the router on a Conv1d raises there as
  // well.
  std::vector<std::string> bad;
  for (const auto& [full_name, layer] : find_target_layers(model.base_model(), router)) {
    if (!layer->is_linear()) bad.push_back(full_name + " (" + nn::to_string(layer->kind()) + ")");
  }
  PEFT_CHECK(bad.empty(), ConfigError, "add_arrow_router",
             "Invalid or unsupported variant combination: arrow_config on ["
                 << detail::join(bad) << "]; only Linear layers support Arrow");

  // add_adapter gives each of the router's layers the Arrow variant (PEFT's
  // lora_arrow["arrow_router"]) and runs PEFT's end-of-update_layer on_adapter_change, which takes
  // every non-router, non-gks adapter of the layer as a task adapter.
  model.add_adapter(kArrowRouterName, router);
  model.set_adapter(kArrowRouterName);
}

std::shared_ptr<PeftModel> create_arrow_model(
    std::shared_ptr<torch::nn::Module> base_model,
    const std::vector<std::string>& task_specific_adapter_paths, const ArrowConfig& arrow_config,
    const std::vector<std::string>& general_adapter_paths) {
  PEFT_CHECK(!task_specific_adapter_paths.empty(), ConfigError, "create_arrow_model",
             "`task_specific_adapter_paths` should contain at least one adapter path");
  // Divergence from PEFT: these checks run before anything is loaded (PEFT raises the use_gks one
  // after loading the task adapters into the base model); the error is the same, the base model is
  // left untouched.
  PEFT_CHECK(!arrow_config.use_gks || !general_adapter_paths.empty(), ConfigError,
             "create_arrow_model",
             "You should provide general LoRA paths if you want to use GenKnowSub.");
  {
    LoraConfig probe;
    probe.arrow_config = arrow_config;
    probe.validate();
  }
  for (const auto& p : task_specific_adapter_paths) check_adapter_source(p);
  if (arrow_config.use_gks) {
    for (const auto& p : general_adapter_paths) check_adapter_source(p);
  }

  // Divergence from PEFT: no **adapter_kwargs (revision, is_trainable, autocast_adapter_dtype,
  // ...); adapters load frozen with the defaults of from_pretrained / load_adapter.
  auto model = PeftModel::from_pretrained(std::move(base_model), task_specific_adapter_paths[0],
                                          std::string(kArrowTaskPrefix) + "0");
  ArrowConfig config = arrow_config;  // PEFT fills the caller's object; here the router's copy
  config.task_adapter_names.clear();
  config.task_adapter_names.push_back(std::string(kArrowTaskPrefix) + "0");
  for (size_t i = 1; i < task_specific_adapter_paths.size(); ++i) {
    const std::string name = kArrowTaskPrefix + std::to_string(i);
    model->load_adapter(task_specific_adapter_paths[i], name);
    config.task_adapter_names.push_back(name);
  }
  config.gks_adapter_names.clear();
  if (config.use_gks) {
    for (size_t i = 0; i < general_adapter_paths.size(); ++i) {
      const std::string name = kArrowGksPrefix + std::to_string(i);
      model->load_adapter(general_adapter_paths[i], name);
      config.gks_adapter_names.push_back(name);
    }
  }
  add_arrow_router(*model, config);
  return model;
}

}  // namespace peft
