// MiCA (Minor Component Adaptation): lora_B holds the r left singular vectors of the base weight
// with the smallest singular values and stays frozen; only lora_A (zero at init) trains. The init
// itself is in layer_init.cpp (Linear / Conv1D) and embedding.cpp; this variant keeps B frozen
// (saved all the same) and otherwise computes plain LoRA. PEFT counterparts: MiCALinearVariant,
// MiCAEmbeddingVariant (variants.py) and frozen_peft_weight_names.
#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

class MicaVariant final : public LoraVariant {
 public:
  explicit MicaVariant(std::string frozen_key) : frozen_key_(std::move(frozen_key)) {}
  const char* name() const override { return "MiCA"; }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    return layer.add_plain_output(std::move(result), x, adapter);
  }

  bool keeps_frozen(const std::string& tensor_key) const override {
    return tensor_key == frozen_key_;
  }

 private:
  std::string frozen_key_;
};

}  // namespace

std::shared_ptr<LoraVariant> make_mica_variant(const LoraLayerImpl& layer,
                                               const AdapterSettings& /*settings*/) {
  const bool embedding = layer.kind() == LayerKind::kEmbedding;
  PEFT_CHECK(layer.is_linear() || embedding, ConfigError, "lora",
             "Invalid or unsupported variant combination: ('mica',) for a "
                 << to_string(layer.kind())
                 << " layer (hint: MiCA supports Linear, GPT-2 Conv1D and Embedding layers)");
  return std::make_shared<MicaVariant>(embedding ? "lora_embedding_B" : "lora_B.weight");
}

}  // namespace peft::nn::variants
