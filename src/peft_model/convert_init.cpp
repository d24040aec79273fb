// Converting an adapter whose init mutated the base (PiSSA, OLoRA, CorDA, LoRA-GA) into a plain
// LoRA for the original base weights, and the warning when such an adapter is loaded. PEFT
// counterparts: PeftModel.save_pretrained(path_initial_model_for_weight_conversion),
// LoraModel.subtract_mutated_init, PeftModel._check_new_adapter_config.
#include "convert_init.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "peft/error.h"
#include "peft/io/adapter_io.h"
#include "peft/io/safetensors.h"

namespace fs = std::filesystem;

namespace peft::detail {

using io::check_adapter_dir;
using io::kAdapterConfigName;
using io::kAdapterWeightsName;
using io::load_safetensors;

namespace {

// The inits whose adapter save_pretrained can turn into a plain LoRA (the base change is B0 A0, low
// rank).
bool convertible(const InitLoraWeights& w) {
  using K = InitLoraWeights::Kind;
  return w.kind == K::kPissa || w.kind == K::kOlora || w.kind == K::kCorda || w.kind == K::kLoraGa;
}

}  // namespace

void warn_if_mutating_init(const LoraConfig& config, const std::string& dir) {
  if (!config.init_lora_weights.mutates_base()) return;
  const std::string hint =
      convertible(config.init_lora_weights)
          ? " (hint: save it with path_initial_model_for_weight_conversion to get a plain LoRA)"
          : "";
  warn("load_adapter",
       "The adapter in \"" + dir + "\" was initialised with init_lora_weights=\"" +
           to_string(config.init_lora_weights) +
           "\", which changes the base model's weights: loading it runs that initialisation on the "
           "base again, so it should not be combined with other adapters" +
           hint + ".");
}

void convert_mutated_init_to_lora(LoraConfig& config,
                                  std::vector<std::pair<std::string, at::Tensor>>& state,
                                  const std::string& initial_dir) {
  if (!convertible(config.init_lora_weights) &&
      config.init_lora_weights.kind != InitLoraWeights::Kind::kTrue) {
    warn("save_pretrained",
         "`path_initial_model_for_weight_conversion` only works for converting a PiSSA/CorDA/OLoRA "
         "adapter to a "
         "LoRA adapter");
  }
  check_adapter_dir(initial_dir);
  const std::string cfg_path = (fs::path(initial_dir) / kAdapterConfigName).string();
  LoraConfig initial = load_lora_config(cfg_path);
  // PEFT rewrites the initial adapter's config so that loading it later does not re-run the SVD /
  // QR.
  if (initial.init_lora_weights.kind != InitLoraWeights::Kind::kTrue) {
    initial.init_lora_weights = InitLoraWeights{};
    save_lora_config(initial, cfg_path);
  }
  PEFT_CHECK(
      !(config.use_rslora && (!config.rank_pattern.empty() || !config.alpha_pattern.empty())),
      ConfigError, "save_pretrained",
      "Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported "
      "when using "
      "`rank_pattern` or `alpha_pattern` at the same time as `use_rslora=True`.");
  const auto init_tensors =
      load_safetensors((fs::path(initial_dir) / kAdapterWeightsName).string());
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [key, value] : state) {
    const bool is_a = key.find("lora_A") != std::string::npos;
    const bool is_b = key.find("lora_B") != std::string::npos;
    if (!is_a && !is_b) continue;  // PEFT keeps only lora_A / lora_B keys
    auto it = init_tensors.find(key);
    PEFT_CHECK(it != init_tensors.end(), FormatError, "save_pretrained",
               "the initial adapter in \""
                   << initial_dir << "\" has no tensor \"" << key
                   << "\" (hint: pass the folder saved right after get_peft_model)");
    PEFT_CHECK(value.dim() >= 2, UnsupportedError, "save_pretrained",
               "\"" << key
                    << "\" is a lora_B bias (lora_bias=True), which the conversion cannot express "
                       "(PEFT fails "
                    << "on it too)");
    at::Tensor init = it->second.to(value.device(), value.scalar_type());
    PEFT_CHECK(init.dim() == value.dim(), ShapeMismatchError, "save_pretrained",
               "\"" << key << "\": the initial adapter's tensor has shape " << init.sizes()
                    << " but the trained one has " << value.sizes());
    if (is_a) {
      out.emplace_back(key, at::cat({value, init}, 0));
    } else {
      out.emplace_back(key, at::cat({value, -init}, 1));
    }
  }
  state = std::move(out);
  config.r *= 2;
  config.lora_alpha =
      config.use_rslora ? config.lora_alpha * std::sqrt(2.0) : config.lora_alpha * 2;
  for (auto& [pattern, r] : config.rank_pattern) r *= 2;
  for (auto& [pattern, alpha] : config.alpha_pattern) alpha *= 2;
  config.init_lora_weights = InitLoraWeights{};
}

}  // namespace peft::detail
