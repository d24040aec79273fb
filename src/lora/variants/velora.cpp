// VeLoRA: a LoRA adapter whose lora_A projection keeps, for the backward pass, one scalar per group
// of input features instead of the input: every sub-token (a contiguous chunk of D = ceil(in / G)
// features) is compressed to its projection on a unit vector e, the "lora_velora_embed" buffer,
// and rebuilt as scale * c * e for lora_A's weight gradient. Forward values, the input gradient and
// lora_B's gradient are plain LoRA's; merging is plain LoRA. e is the normalised mean sub-token of
// the (dropped-out) training input, refreshed at every training forward (init_type
// "batch_average"), once ("batch_average_once"), or a fixed random unit vector ("random"). PEFT
// counterparts: VeloraLinearVariant (variants.py) and VeloraFunction (velora.py).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "peft/error.h"
#include "peft/lora/adapter_dict.h"
#include "peft/lora/layer.h"
#include "peft/lora/variant.h"

namespace peft::nn::variants {
namespace {

constexpr const char* kEmbedKey = "lora_velora_embed";

int64_t group_dim(int64_t in_features, int64_t groups) {
  return (in_features + groups - 1) / groups;
}

// x (..., in) -> (T, G, D), zero-padded at the end of the feature axis.
at::Tensor grouped_subtokens(const at::Tensor& x, int64_t groups) {
  const int64_t in = x.size(-1);
  const int64_t D = group_dim(in, groups);
  at::Tensor flat = x.reshape({-1, in});
  if (groups * D != in) flat = at::constant_pad_nd(flat, {0, groups * D - in});
  return flat.reshape({-1, groups, D});
}

// e / ||e|| in float32; all ones (normalised) when e is zero (PEFT _normalize_projection).
at::Tensor normalize_projection(const at::Tensor& e) {
  at::Tensor f = e.to(at::kFloat);
  at::Tensor norm = at::linalg_vector_norm(f);
  if (norm.item<double>() == 0.0) {
    f = at::ones_like(f);
    norm = at::linalg_vector_norm(f);
  }
  return f / norm;
}

// The lora_A projection that saves (T, G) compressed activations instead of its (T, in) input.
struct VeloraFunction : public torch::autograd::Function<VeloraFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& embed, int64_t groups,
                            double scale) {
    at::Tensor output = at::linear(input, weight);
    at::Tensor compressed =
        at::einsum("tgd,d->tg", {grouped_subtokens(input, groups), embed.to(input.scalar_type())});
    ctx->save_for_backward({compressed, weight, embed});
    ctx->saved_data["input_shape"] = input.sizes().vec();
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["scale"] = scale;
    return output;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& compressed = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& embed = saved[2];
    const auto shape = ctx->saved_data["input_shape"].toIntVector();
    const auto input_dtype = static_cast<at::ScalarType>(ctx->saved_data["input_dtype"].toInt());
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor& g = grad_outputs[0];
    const auto dtype = g.scalar_type();
    const at::Tensor g2 = g.reshape({-1, g.size(-1)});  // (T, r)
    at::Tensor grad_input, grad_weight;
    if (ctx->needs_input_grad(0)) {
      grad_input = at::matmul(g2, weight.to(dtype)).reshape(shape).to(input_dtype);
    }
    if (ctx->needs_input_grad(1)) {
      // x_hat[t, g D + d] = scale * c[t, g] * e[d], padding columns dropped.
      const at::Tensor e = embed.to(dtype);
      const at::Tensor c = compressed.to(dtype);
      at::Tensor x_hat = (c.unsqueeze(-1) * e.view({1, 1, -1})).reshape({c.size(0), -1});
      x_hat = x_hat.slice(1, 0, shape.back()) * scale;
      grad_weight = at::matmul(g2.t(), x_hat).to(weight.scalar_type());
    }
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// One buffer ("value") per adapter, so the embed follows the layer across devices without being a
// parameter.
class EmbedBufferImpl : public torch::nn::Module {
 public:
  explicit EmbedBufferImpl(at::Tensor v) { value = register_buffer("value", std::move(v)); }
  at::Tensor value;
};

class VeloraVariant final : public LoraVariant {
 public:
  explicit VeloraVariant(VeloraConfig config) : config_(std::move(config)) {}
  const char* name() const override { return "VeLoRA"; }

  void init(LoraLayerImpl& layer, const std::string& adapter) override {
    const int64_t D = group_dim(layer.in_features(), config_.num_groups);
    const at::Tensor w = layer.float_weight();
    torch::NoGradGuard no_grad;
    at::Tensor embed;
    if (config_.init_type == "random") {
      // PEFT draws it after lora_A's init, in the base weight's dtype.
      embed = normalize_projection(torch::randn({D}, w.options())).to(w.scalar_type());
      initialized_ = true;
    } else {
      embed = torch::zeros({D}, w.options());
      initialized_ = false;
    }
    layer.adapter_dict(kEmbedKey).insert(adapter, std::make_shared<EmbedBufferImpl>(embed));
  }

  void remove(LoraLayerImpl& layer, const std::string& adapter) override {
    layer.adapter_dict(kEmbedKey).erase(adapter);
  }

  void append_tensors(const LoraLayerImpl& layer, const std::string& adapter,
                      std::vector<std::pair<std::string, at::Tensor>>& out) const override {
    if (const auto* d = layer.find_adapter_dict(kEmbedKey); d && d->contains(adapter))
      out.emplace_back(kEmbedKey, d->get<EmbedBufferImpl>(adapter)->value);
  }

  bool keeps_frozen(const std::string& tensor_key) const override {
    return tensor_key == kEmbedKey;
  }

  at::Tensor forward(const LoraLayerImpl& layer, const std::string& adapter, const at::Tensor& x,
                     at::Tensor result) const override {
    if (!(layer.is_training() && at::GradMode::is_enabled()))
      return layer.add_plain_output(std::move(result), x, adapter);
    const at::Tensor xin = layer.lora_dropout(x, adapter);
    at::Tensor embed = layer.find_adapter_dict(kEmbedKey)->get<EmbedBufferImpl>(adapter)->value;
    update_embed(embed, xin);
    const at::Tensor A = layer.adapter_tensor(adapter, "lora_A.weight");
    const at::Tensor B = layer.adapter_tensor(adapter, "lora_B.weight");
    const at::Tensor h =
        VeloraFunction::apply(xin, A, embed.clone(), config_.num_groups, config_.scale);
    at::Tensor y = at::matmul(h, B.t());
    const at::Tensor bias = layer.adapter_tensor(adapter, "lora_B.bias");
    if (bias.defined()) y = y + bias;
    return result + (y * layer.scaling(adapter)).to(result.scalar_type());
  }

 private:
  // PEFT _maybe_update_embed: the normalised mean sub-token of this batch (padding included).
  void update_embed(at::Tensor& embed, const at::Tensor& x) const {
    if (config_.init_type == "random") return;
    if (config_.init_type == "batch_average_once" && initialized_) return;
    torch::NoGradGuard no_grad;
    const int64_t D = embed.size(0);
    const at::Tensor sub = grouped_subtokens(x.detach(), config_.num_groups).reshape({-1, D});
    embed.copy_(normalize_projection(sub.mean(0)).to(embed.scalar_type()));
    initialized_ = true;
  }

  VeloraConfig config_;
  // Whether the embed holds a batch average yet (PEFT lora_velora_initialized: not saved, so a
  // loaded batch_average_once adapter takes a new average at its first training step). Forward
  // writes it, as PEFT's forward does: training forwards of one layer do not run concurrently.
  mutable bool initialized_ = false;
};

}  // namespace

std::shared_ptr<LoraVariant> make_velora_variant(const LoraLayerImpl& layer,
                                                 const AdapterSettings& settings) {
  PEFT_CHECK(layer.is_linear() && !layer.is_quantized(), ConfigError, "lora",
             "Invalid or unsupported variant combination: ('velora_config',) for a "
                 << (layer.is_quantized() ? "quantized " : "") << to_string(layer.kind())
                 << " layer (hint: VeLoRA is supported on standard LoRA linear layers only)");
  return std::make_shared<VeloraVariant>(*settings.velora_config);
}

}  // namespace peft::nn::variants
