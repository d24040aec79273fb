// A tied LoRA adapter (ensure_weight_tying with target_modules on tied input / output embeddings):
// the output head shares the embedding's weight, so its delta is the embedding's delta (vocab, dim)
// and its forward adds s * (x B_e) A_e with the embedding's factors. Nothing of its own is created
// or saved, and merging it does nothing: the embedding's merge already changed the shared weight.
#include "tied.h"

#include <ATen/ATen.h>

#include "peft/error.h"
#include "peft/lora/layer.h"

namespace peft::nn::variants {
namespace {

class TiedVariant final : public LoraVariant {
 public:
  explicit TiedVariant(std::weak_ptr<LoraLayerImpl> source) : source_(std::move(source)) {}
  const char* name() const override { return "tied"; }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    const auto src = source(adapter);
    const at::Tensor A_e = src->adapter_tensor(adapter, "lora_embedding_A");  // (r, vocab)
    const at::Tensor B_e = src->adapter_tensor(adapter, "lora_embedding_B");  // (dim, r)
    const at::Tensor xin = x.scalar_type() == A_e.scalar_type() ? x : x.to(A_e.scalar_type());
    const at::Tensor y = at::matmul(at::matmul(xin, B_e), A_e) * layer.scaling(adapter);
    return result + y.to(result.scalar_type());
  }

  at::Tensor get_delta_weight(const LoraLayerImpl& /*layer*/,
                              const std::string& adapter) const override {
    return source(adapter)->get_delta_weight(adapter);
  }
  at::Tensor merge_safe(LoraLayerImpl& /*layer*/, const std::string& /*adapter*/,
                        const at::Tensor& weight) override {
    return weight;
  }
  void merge_unsafe(LoraLayerImpl& /*layer*/, const std::string& /*adapter*/,
                    at::Tensor& /*weight*/) override {}
  at::Tensor unmerge(LoraLayerImpl& /*layer*/, const std::string& /*adapter*/,
                     const at::Tensor& weight) override {
    return weight;
  }

 private:
  std::shared_ptr<LoraLayerImpl> source(const std::string& adapter) const {
    auto s = source_.lock();
    PEFT_CHECK(
        s && s->has_adapter(adapter), Error, "ensure_weight_tying",
        "the embedding whose LoRA adapter \"" << adapter << "\" this output head uses is gone");
    return s;
  }
  std::weak_ptr<LoraLayerImpl> source_;
};

}  // namespace

std::shared_ptr<LoraVariant> make_tied_variant(const LoraLayerImpl& head,
                                               const std::shared_ptr<LoraLayerImpl>& source,
                                               const std::string& adapter) {
  PEFT_CHECK(head.kind() == LayerKind::kLinear && source->kind() == LayerKind::kEmbedding,
             UnsupportedError, "ensure_weight_tying",
             "LoRA weight tying links a Linear output head to an Embedding; got a "
                 << to_string(head.kind()) << " tied to a " << to_string(source->kind()));
  PEFT_CHECK(
      source->weight().is_same(head.weight()), ConfigError, "ensure_weight_tying",
      "the output head's weight is not the embedding's tensor, so the two layers are not tied");
  PEFT_CHECK(!source->adapter_settings(adapter).use_dora, UnsupportedError, "ensure_weight_tying",
             "tied LoRA adapters cannot use DoRA");
  return std::make_shared<TiedVariant>(source);
}

}  // namespace peft::nn::variants
