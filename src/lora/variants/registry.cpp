// Where LoRA variants are chosen (PEFT: each layer type's lora_variants table and
// resolve_lora_variant). Adding a variant = its file in this folder, which defines its factory
// make_<name>_variant, plus its line in kVariants below (and the factory's name on the line that
// declares them).
#include <string>
#include <vector>

#include "../../strings.h"
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/linear.h"
#include "peft/lora/variant.h"
#include "peft/quant/quantized_weight.h"

namespace peft::nn {
namespace variants {

// A variant file's factory: checks that the layer kind and settings suit the variant (ConfigError /
// UnsupportedError with PEFT's messages) and builds the per-adapter variant object.
using Factory = std::shared_ptr<LoraVariant>(const LoraLayerImpl& layer,
                                             const AdapterSettings& settings);
Factory make_alora_variant, make_arrow_variant, make_bdlora_variant, make_dora_variant,
    make_mica_variant, make_monteclora_variant, make_qalora_variant, make_velora_variant;

}  // namespace variants

namespace {

// A Linear whose base weight comes from a GPTQ checkpoint (PEFT's GPTQLoraLinear).
bool is_gptq(const LoraLayerImpl& layer) {
  const auto* linear = dynamic_cast<const LinearImpl*>(&layer);
  return linear && linear->quantized_weight() &&
         linear->quantized_weight()->method() == quant::QuantMethod::kGPTQ;
}

struct VariantSpec {
  const char* key;  // the LoraConfig field that asks for the variant
  // whether an adapter's settings ask for it on this layer
  bool (*requested)(const LoraLayerImpl& layer, const AdapterSettings& s);
  variants::Factory* make;
};

// Sorted by key, as PEFT sorts the requested keys.
const VariantSpec kVariants[] = {
    {"alora_invocation_tokens",
     [](const LoraLayerImpl&, const AdapterSettings& s) {
       return s.alora_invocation_tokens.has_value();
     },
     variants::make_alora_variant},
    {"arrow_config",
     [](const LoraLayerImpl&, const AdapterSettings& s) { return s.arrow_config.has_value(); },
     variants::make_arrow_variant},
    // PEFT asks for MiCA's variant only for the exact spelling "mica" (its init takes any case).
    {"mica",
     [](const LoraLayerImpl&, const AdapterSettings& s) {
       return s.init_lora_weights.kind == InitLoraWeights::Kind::kMica &&
              s.init_lora_weights.spelling.empty();
     },
     variants::make_mica_variant},
    {"monteclora_config",
     [](const LoraLayerImpl&, const AdapterSettings& s) { return s.monteclora_config.has_value(); },
     variants::make_monteclora_variant},
    {"use_bdlora",
     [](const LoraLayerImpl&, const AdapterSettings& s) { return s.use_bdlora.has_value(); },
     variants::make_bdlora_variant},
    {"use_dora", [](const LoraLayerImpl&, const AdapterSettings& s) { return s.use_dora; },
     variants::make_dora_variant},
    // PEFT resolves QALoRA only in its GPTQ layer; elsewhere use_qalora is plain LoRA.
    {"use_qalora",
     [](const LoraLayerImpl& layer, const AdapterSettings& s) {
       return s.use_qalora && is_gptq(layer);
     },
     variants::make_qalora_variant},
    {"velora_config",
     [](const LoraLayerImpl&, const AdapterSettings& s) { return s.velora_config.has_value(); },
     variants::make_velora_variant},
};

}  // namespace

std::shared_ptr<LoraVariant> resolve_lora_variant(const LoraLayerImpl& layer,
                                                  const AdapterSettings& settings) {
  std::vector<std::string> requested;
  const VariantSpec* chosen = nullptr;
  for (const auto& spec : kVariants) {
    if (!spec.requested(layer, settings)) continue;
    requested.push_back(spec.key);
    chosen = &spec;
  }
  if (!chosen) return nullptr;
  if (is_gptq(layer)) {
    PEFT_CHECK(!settings.use_dora, ConfigError, "use_dora",
               "GPTQLoraLinear does not support DoRA yet, please set it to False");
    // Divergence from PEFT: PEFT's GPTQ layer resolves only DoRA and QALoRA and silently trains
    // plain LoRA for every other variant the config asks for; refused instead.
    PEFT_CHECK(std::string(chosen->key) == "use_qalora" && requested.size() == 1, UnsupportedError,
               "lora",
               "(" << peft::detail::join(requested, ", ", "'") << ") on GPTQ layer \""
                   << settings.target_name
                   << "\": PEFT's GPTQ LoRA layer supports only QALoRA (use_qalora) and plain "
                      "LoRA (hint: drop the variant, or load the float model)");
  }
  PEFT_CHECK(requested.size() == 1, ConfigError, "lora",
             "Invalid or unsupported variant combination: ("
                 << peft::detail::join(requested, ", ", "'")
                 << ") (hint: a LoRA adapter takes at most one of "
                    "DoRA, aLoRA, Arrow, MiCA, BD-LoRA, VeLoRA, MonteCLoRA and QALoRA)");
  return chosen->make(layer, settings);
}

}  // namespace peft::nn
