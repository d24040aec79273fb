// QALoRA (quantization-aware LoRA) on GPTQ layers: the input is average-pooled over groups of
// qalora_group_size features and scaled by the number of groups before lora_A, whose width is
// in / qalora_group_size; lora_B as usual. The update cannot be merged into the quantized weight
// (PEFT refuses every merge). PEFT counterparts: QALoraLinearVariant (variants.py) and
// GPTQLoraLinear.resolve_lora_variant (gptq.py).
#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

class QaLoraVariant final : public LoraVariant {
 public:
  explicit QaLoraVariant(int64_t group_size) : group_size_(group_size) {}
  const char* name() const override { return "QALoRA"; }

  void init(LoraLayerImpl& layer, const std::string& adapter) override {
    // PEFT replaces lora_A, after the usual init, by a fresh nn.Linear(in / group_size, r): torch's
    // default init, kaiming_uniform_ with a = sqrt(5), whatever init_lora_weights says.
    const int64_t r = layer.adapter_settings(adapter).r;
    const at::Tensor old = layer.adapter_tensor(adapter, "lora_A.weight");
    torch::NoGradGuard no_grad;
    at::Tensor w =
        torch::empty({r, layer.in_features() / group_size_}, old.options().requires_grad(false));
    torch::nn::init::kaiming_uniform_(w, std::sqrt(5.0));
    layer.set_factor_weight(adapter, /*a_side=*/true, w);
  }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    const at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight");
    const at::Tensor B = layer.adapter_tensor(adapter, "lora_B.weight");
    const at::Tensor xin = layer.lora_dropout(x, adapter).to(A.scalar_type());
    const int64_t in = layer.in_features(), groups = in / group_size_;
    // (N, in) -> (N, groups, group_size) -> mean over each group, times the number of groups.
    const at::Tensor pooled =
        xin.reshape({-1, groups, group_size_}).mean(2) * static_cast<double>(groups);
    at::Tensor delta = at::matmul(at::matmul(pooled, A.t()), B.t()) * layer.scaling(adapter);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(B.size(0));
    return result + delta.reshape(shape).to(result.scalar_type());
  }

  at::Tensor get_delta_weight(const LoraLayerImpl& /*layer*/,
                              const std::string& /*adapter*/) const override {
    throw UnsupportedError("lora", "QALoRA for GPTQ layers does not support 'get_delta_weight'.");
  }

  void check_mergeable(const LoraLayerImpl& /*layer*/, const std::string& adapter) const override {
    throw UnsupportedError("merge",
                           "QALoRA for GPTQ layers does not support 'merge_unsafe'. "
                           "(adapter \"" +
                               adapter + "\"; hint: keep it unmerged)");
  }

 private:
  int64_t group_size_;
};

}  // namespace

std::shared_ptr<LoraVariant> make_qalora_variant(const LoraLayerImpl& layer,
                                                 const AdapterSettings& settings) {
  const int64_t g = settings.qalora_group_size;
  PEFT_CHECK(g > 0, ConfigError, "qalora_group_size",
             "qalora_group_size must be a positive integer, got " << g);
  PEFT_CHECK(layer.in_features() % g == 0, ConfigError, "qalora_group_size",
             "`use_qalora=True` requires `module.in_features` ("
                 << layer.in_features() << ") to bedivisible by 'qalora_group_size' (" << g << ")");
  // Divergence from PEFT: QALoraLinearVariant.forward leaves lora_B's bias out, so a lora_bias
  // adapter would train a bias that does nothing; refused instead.
  PEFT_CHECK(!settings.lora_bias, UnsupportedError, "use_qalora",
             "lora_bias with QALoRA: PEFT's QALoRA forward ignores lora_B's bias (hint: set "
             "lora_bias=false)");
  return std::make_shared<QaLoraVariant>(g);
}

}  // namespace peft::nn::variants
