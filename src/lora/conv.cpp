// Adapter-ready Conv1d/2d/3d (PEFT lora._ConvNd).
#include "peft/lora/conv.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "init_weights.h"
#include "peft/error.h"

namespace peft::nn {
namespace {

std::vector<int64_t> expand(const std::vector<int64_t>& v, int dims, int64_t fill,
                            const char* what) {
  if (v.empty()) return std::vector<int64_t>(static_cast<size_t>(dims), fill);
  if (v.size() == 1) return std::vector<int64_t>(static_cast<size_t>(dims), v[0]);
  PEFT_CHECK(v.size() == static_cast<size_t>(dims), ConfigError, "nn::Conv",
             what << " has " << v.size() << " values; expected 1 or " << dims);
  return v;
}

LayerKind kind_for(int dims) {
  PEFT_CHECK(dims >= 1 && dims <= 3, ConfigError, "nn::Conv",
             "dims " << dims << "; expected 1, 2 or 3");
  return dims == 1 ? LayerKind::kConv1d : dims == 2 ? LayerKind::kConv2d : LayerKind::kConv3d;
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                const std::vector<int64_t>& dilation, int64_t groups) {
  std::vector<int64_t> output_padding(stride.size(), 0);
  return at::convolution(x, w, b, stride, padding, dilation, false, output_padding, groups);
}

}  // namespace

ConvNdImpl::ConvNdImpl(int dims, int64_t in_channels, int64_t out_channels,
                       std::vector<int64_t> kernel_size, ConvOptions options)
    : LoraLayerImpl(kind_for(dims)),
      dims_(dims),
      in_channels_(in_channels),
      out_channels_(out_channels),
      kernel_(expand(kernel_size, dims, 1, "kernel_size")),
      options_(std::move(options)) {
  options_.stride = expand(options_.stride, dims, 1, "stride");
  options_.padding = expand(options_.padding, dims, 0, "padding");
  options_.dilation = expand(options_.dilation, dims, 1, "dilation");
  PEFT_CHECK(options_.groups > 0 && in_channels % options_.groups == 0 &&
                 out_channels % options_.groups == 0,
             ConfigError, "nn::Conv",
             "groups " << options_.groups << " must divide in_channels " << in_channels
                       << " and out_channels " << out_channels);
  std::vector<int64_t> shape{out_channels, in_channels / options_.groups};
  shape.insert(shape.end(), kernel_.begin(), kernel_.end());
  at::Tensor w = torch::empty(shape);
  detail::default_weight_init_(w);
  at::Tensor b;
  if (options_.bias) {
    b = torch::empty({out_channels});
    detail::default_bias_init_(b, w);
  }
  register_base(w, b);
}

void ConvNdImpl::create_adapter(const std::string& adapter, const AdapterSettings& s) {
  PEFT_CHECK(
      s.r % options_.groups == 0, ConfigError, "lora",
      "Targeting a Conv"
          << dims_ << "d with groups=" << options_.groups << " and rank " << s.r
          << ". Currently, support is limited to conv layers where the rank is divisible "
             "by groups. Either choose a different rank or do not target this specific layer.");
  if (options_.groups > 1) {
    warn("lora", "LoRA adapter added to a ConvNd layer with groups > 1. Merging is not supported.");
  }
  std::vector<int64_t> a_shape{s.r, in_channels_};
  a_shape.insert(a_shape.end(), kernel_.begin(), kernel_.end());
  std::vector<int64_t> b_shape{out_channels_, s.r / options_.groups};
  b_shape.insert(b_shape.end(), static_cast<size_t>(dims_), 1);
  add_factors(adapter, s, a_shape, b_shape);
}

void ConvNdImpl::destroy_adapter(const std::string& adapter) { remove_factors(adapter); }

at::Tensor ConvNdImpl::base_forward(const at::Tensor& x, const at::Tensor& w,
                                    const at::Tensor& b) const {
  return conv(x, w, b, options_.stride, options_.padding, options_.dilation, options_.groups);
}

at::Tensor ConvNdImpl::lora_forward(const at::Tensor& x, const std::string& adapter) const {
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;
  const auto& B = lora_B_->get<FactorImpl>(adapter);
  const at::Tensor xin = x.scalar_type() == A.scalar_type() ? x : x.to(A.scalar_type());
  const std::vector<int64_t> ones(static_cast<size_t>(dims_), 1);
  const std::vector<int64_t> zeros(static_cast<size_t>(dims_), 0);
  // PEFT copies stride and padding to lora_A but not dilation or groups (a dilated base conv
  // therefore gives mismatched shapes in PEFT too).
  const at::Tensor h = conv(xin, A, at::Tensor(), options_.stride, options_.padding, ones, 1);
  return conv(h, B->weight, B->bias, ones, zeros, ones, options_.groups) * scaling(adapter);
}

at::Tensor ConvNdImpl::add_adapter_output(at::Tensor result, const at::Tensor& x,
                                          const std::string& adapter) const {
  const at::Tensor y = lora_forward(lora_dropout(x, adapter), adapter);
  PEFT_CHECK(y.sizes() == result.sizes(), ShapeMismatchError, "lora",
             "Conv LoRA output shape "
                 << y.sizes() << " differs from the base output " << result.sizes()
                 << " (hint: PEFT does not support dilated base convolutions either)");
  return result + y.to(result.scalar_type());
}

at::Tensor ConvNdImpl::lora_delta_weight(const std::string& adapter) const {
  const auto& A = lora_A_->get<FactorImpl>(adapter)->weight;  // (r, in, *k)
  const auto& B = lora_B_->get<FactorImpl>(adapter)->weight;  // (out, r / groups, 1...)
  PEFT_CHECK(options_.groups == 1, UnsupportedError, "lora",
             "get_delta_weight / merge of a Conv" << dims_ << "d with groups=" << options_.groups
                                                  << " is not supported (as in PEFT)");
  // Divergence from PEFT: PEFT uses a matmul for 1x1 Conv2d and conv(A^T, B) otherwise, and fails
  // for Conv3d kernels (1, 1, k). B's kernel is all ones, so both equal this one matmul, which
  // works for every kernel.
  return scaled_product(B.flatten(1), A.flatten(1), adapter).view(weight().sizes());
}

}  // namespace peft::nn
