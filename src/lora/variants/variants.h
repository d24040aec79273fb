// The factories of the LoRA variants (private to src/lora): each checks that the layer kind and
// settings suit it and builds the per-adapter variant object. registry.cpp picks one from an
// adapter's settings.
#pragma once

#include <memory>
#include <string>

#include "peft/lora/variant.h"

namespace peft::nn {
class LoraLayerImpl;
struct AdapterSettings;
}  // namespace peft::nn

namespace peft::nn::variants {

std::shared_ptr<LoraVariant> make_dora_variant(const LoraLayerImpl& layer,
                                               const AdapterSettings& settings);
std::shared_ptr<LoraVariant> make_alora_variant(const LoraLayerImpl& layer,
                                                const AdapterSettings& settings);
std::shared_ptr<LoraVariant> make_arrow_variant(const LoraLayerImpl& layer,
                                                const AdapterSettings& settings);
// Not chosen from settings: LoraLayerImpl::tie_adapter_to installs it (ensure_weight_tying).
std::shared_ptr<LoraVariant> make_tied_variant(const LoraLayerImpl& head,
                                               const std::shared_ptr<LoraLayerImpl>& source,
                                               const std::string& adapter);

}  // namespace peft::nn::variants
