// BD-LoRA (block-diagonal LoRA): for a module whose name matches use_bdlora.target_modules_bd_a,
// lora_A is block-diagonal; for target_modules_bd_b, lora_B. The block-diagonal factor is stored
// packed, (out, in / nblocks), block i being rows [i n, (i+1) n), and applied as a batched block
// product; merging adds the dense update. Sharded by blocks, such a factor needs no communication
// under tensor parallelism. PEFT counterparts: BdLoraLinearVariant and BlockDiagonalLinear
// (variants.py).
#include <ATen/ATen.h>
#include <torch/nn/init.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

// The dense (out, in) matrix of a packed block-diagonal weight (PEFT
// weight_as_blockdiagonal_matrix).
at::Tensor dense(const at::Tensor& packed, int64_t nblocks) {
  return at::block_diag(at::chunk(packed, nblocks, 0));
}

// x (..., in) through a packed block-diagonal weight (out, in / nblocks): (..., out). Each block
// maps x[..., i m:(i+1) m] to y[..., i n:(i+1) n] (PEFT BlockDiagonalLinear.forward).
at::Tensor block_product(const at::Tensor& x, const at::Tensor& packed, int64_t nblocks) {
  const int64_t in = x.size(-1);
  const int64_t out = packed.size(0);
  const int64_t m = in / nblocks;
  const int64_t n = out / nblocks;
  at::Tensor xb = x.reshape({-1, nblocks, m}).transpose(0, 1);  // (nb, N, m)
  at::Tensor w = packed.view({nblocks, n, m});                  // (nb, n, m)
  at::Tensor y = at::bmm(xb, w.transpose(1, 2));                // (nb, N, n)
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out);
  return y.transpose(0, 1).reshape(shape);
}

class BdLoraVariant final : public LoraVariant {
 public:
  BdLoraVariant(bool a_blocks, bool b_blocks, int64_t nblocks)
      : a_blocks_(a_blocks), b_blocks_(b_blocks), nblocks_(nblocks) {}
  const char* name() const override { return "BD-LoRA"; }

  void init(LoraLayerImpl& layer, const std::string& adapter) override {
    if (!a_blocks_ && !b_blocks_) return;  // match_strict = false and no match: plain LoRA
    const int64_t r = layer.adapter_settings(adapter).r;
    const at::Tensor old =
        layer.adapter_tensor(adapter, a_blocks_ ? "lora_A.weight" : "lora_B.weight");
    const int64_t in = a_blocks_ ? layer.in_features() : r;
    const int64_t out = a_blocks_ ? r : layer.out_features();
    PEFT_CHECK(in % nblocks_ == 0 && out % nblocks_ == 0, ConfigError, "use_bdlora",
               "self.in_features=" << in << " or self.out_features=" << out << " not divisible by "
                                   << nblocks_ << " (block-diagonal lora_"
                                   << (a_blocks_ ? "A" : "B") << " of a " << layer.in_features()
                                   << " -> " << layer.out_features() << " layer with r=" << r
                                   << "; hint: choose nblocks dividing r and the layer's sizes)");
    // PEFT builds the block factor after the usual init and in the base weight's dtype: A with
    // torch's default kaiming_uniform_ (a = 0), B with zeros.
    torch::NoGradGuard no_grad;
    at::Tensor w = torch::empty({out, in / nblocks_}, old.options().requires_grad(false));
    if (a_blocks_) {
      torch::nn::init::kaiming_uniform_(w);
    } else {
      w.zero_();
    }
    layer.set_factor_weight(adapter, a_blocks_, w);
  }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    const at::Tensor xin = layer.lora_dropout(x, adapter);
    const at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight");
    const at::Tensor B = layer.adapter_tensor(adapter, "lora_B.weight");
    const at::Tensor h = a_blocks_ ? block_product(xin, A, nblocks_) : at::matmul(xin, A.t());
    at::Tensor y = b_blocks_ ? block_product(h, B, nblocks_) : at::matmul(h, B.t());
    const at::Tensor bias = layer.adapter_tensor(adapter, "lora_B.bias");
    if (bias.defined()) y = y + bias;
    return result + (y * layer.scaling(adapter)).to(result.scalar_type());
  }

  at::Tensor get_delta_weight(const LoraLayerImpl& layer,
                              const std::string& adapter) const override {
    // PEFT _get_bdlora_delta_weight: dense factors, float32 on CPU for half precision, base dtype.
    at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight").detach();
    at::Tensor B = layer.adapter_tensor(adapter, "lora_B.weight").detach();
    if (a_blocks_) A = dense(A, nblocks_);
    if (b_blocks_) B = dense(B, nblocks_);
    const auto dtype = layer.weight().scalar_type();
    const bool upcast = A.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    if (upcast) {
      A = A.to(at::kFloat);
      B = B.to(at::kFloat);
    }
    return (at::matmul(B, A) * layer.scaling(adapter)).to(dtype);
  }

 private:
  bool a_blocks_;
  bool b_blocks_;
  int64_t nblocks_;
};

bool matches_any(const std::optional<std::vector<std::string>>& patterns, const std::string& name) {
  if (!patterns) return false;
  for (const auto& p : *patterns) {
    if (name.find(p) != std::string::npos) return true;  // PEFT: `pattern in target_name`
  }
  return false;
}

}  // namespace

std::shared_ptr<LoraVariant> make_bdlora_variant(const LoraLayerImpl& layer,
                                                 const AdapterSettings& settings) {
  PEFT_CHECK(layer.kind() == LayerKind::kLinear, ConfigError, "lora",
             "Invalid or unsupported variant combination: ('use_bdlora',) for a "
                 << to_string(layer.kind())
                 << " layer (hint: BD-LoRA supports torch Linear layers only, as in PEFT)");
  const BdLoraConfig& c = *settings.use_bdlora;
  const std::string& target = settings.target_name;
  const bool a = matches_any(c.target_modules_bd_a, target);
  const bool b = matches_any(c.target_modules_bd_b, target);
  PEFT_CHECK(!(a && b), ConfigError, "use_bdlora",
             "Target " << target << " matches both A and B block-diagonal patterns");
  PEFT_CHECK(!c.match_strict || a || b, ConfigError, "use_bdlora",
             "Target " << target
                       << " matches neither A nor B block-diagonal patterns. If this is "
                          "intentional, set match_strict=False in BdLoraConfig during "
                          "initialization.");
  PEFT_CHECK(!(b && settings.lora_bias), UnsupportedError, "use_bdlora",
             "lora_bias on a block-diagonal lora_B (" << target
                                                      << "): the block factor has no bias in PEFT "
                                                         "(hint: set lora_bias=false)");
  PEFT_CHECK(c.nblocks >= 1, ConfigError, "use_bdlora",
             "nblocks must be a positive integer, got " << c.nblocks);
  return std::make_shared<BdLoraVariant>(a, b, c.nblocks);
}

}  // namespace peft::nn::variants
