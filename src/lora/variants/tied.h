// The tied-adapter variant's factory (private to src/lora): not chosen from an adapter's settings
// like the others (registry.cpp) but installed by LoraLayerImpl::tie_adapter_to
// (ensure_weight_tying).
#pragma once

#include <memory>
#include <string>

#include "peft/lora/variant.h"

namespace peft::nn {
class LoraLayerImpl;
}  // namespace peft::nn

namespace peft::nn::variants {

// `head` (a Linear sharing `source`'s weight) uses `source`'s LoRA `adapter`; checks the kinds and
// the tying.
std::shared_ptr<LoraVariant> make_tied_variant(const LoraLayerImpl& head,
                                               const std::shared_ptr<LoraLayerImpl>& source,
                                               const std::string& adapter);

}  // namespace peft::nn::variants
