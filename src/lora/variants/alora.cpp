// aLoRA (activated LoRA): the adapter acts only from the last occurrence of its invocation token
// sequence onwards, per batch row; positions before it see the base model. PEFT counterpart:
// ALoraLinearVariant (variants.py) with the offsets of calculate_alora_offsets
// (peft/lora/forward_context.h).
#include <ATen/ATen.h>

#include "peft/error.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

class AloraVariant final : public LoraVariant {
 public:
  explicit AloraVariant(std::vector<int64_t> invocation_tokens)
      : invocation_tokens_(std::move(invocation_tokens)) {}
  const char* name() const override { return "aLoRA"; }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    const at::Tensor y = layer.lora_forward(layer.lora_dropout(x, adapter), adapter);
    return result + (y * alora_position_mask(y, invocation_tokens_)).to(result.scalar_type());
  }

  void check_mergeable(const LoraLayerImpl& /*layer*/, const std::string& adapter) const override {
    throw UnsupportedError(
        "merge", "aLoRA adapter \"" + adapter +
                     "\" cannot be merged: it acts only from the invocation sequence onwards "
                     "(PEFT raises too)");
  }

 private:
  std::vector<int64_t> invocation_tokens_;
};

}  // namespace

std::shared_ptr<LoraVariant> make_alora_variant(const LoraLayerImpl& layer,
                                                const AdapterSettings& settings) {
  PEFT_CHECK(layer.is_linear(), UnsupportedError, "lora",
             "aLoRA (alora_invocation_tokens) supports Linear layers only; this layer is a "
                 << to_string(layer.kind()) << " (hint: target only linear modules)");
  return std::make_shared<AloraVariant>(*settings.alora_invocation_tokens);
}

}  // namespace peft::nn::variants
