// Adapter-ready Conv1d / Conv2d / Conv3d. PEFT counterpart: lora._ConvNd (tuners/lora/layer.py):
// lora_A = ConvNd(in, r, kernel, stride, padding), lora_B = ConvNd(r, out, 1, groups = base
// groups).
#pragma once

#include <vector>

#include "peft/lora/layer.h"

namespace peft::nn {

struct ConvOptions {
  std::vector<int64_t> stride;    // empty = 1 in every dimension
  std::vector<int64_t> padding;   // empty = 0
  std::vector<int64_t> dilation;  // empty = 1
  int64_t groups = 1;
  bool bias = true;
};

// W: (out, in / groups, *kernel). Init as PyTorch (kaiming_uniform a = sqrt(5); bias
// U(+-1/sqrt(fan_in))).
class ConvNdImpl : public LoraLayerImpl {
 public:
  ConvNdImpl(int dims, int64_t in_channels, int64_t out_channels, std::vector<int64_t> kernel_size,
             ConvOptions options = {});
  at::Tensor forward(const at::Tensor& x) { return forward_with_adapters(x); }
  int64_t in_features() const override { return in_channels_; }
  int64_t out_features() const override { return out_channels_; }
  int dims() const { return dims_; }
  int64_t groups() const { return options_.groups; }
  const std::vector<int64_t>& kernel_size() const { return kernel_; }
  at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias) const override;
  // scaling * conv(conv(x, A), B): lora_A with the base's stride and padding, lora_B a 1x1 grouped
  // conv.
  at::Tensor lora_forward(const at::Tensor& x, const std::string& adapter) const override;
  // (out, in, *kernel) = scaling * sum_r B[o, r] A[r, i, k...]. Merging a grouped conv is refused
  // (as PEFT).
  at::Tensor lora_delta_weight(const std::string& adapter) const override;

 protected:
  void create_adapter(const std::string& adapter, const AdapterSettings& settings) override;
  void destroy_adapter(const std::string& adapter) override;
  at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                const std::string& adapter) const override;

 private:
  int dims_;
  int64_t in_channels_;
  int64_t out_channels_;
  std::vector<int64_t> kernel_;
  ConvOptions options_;
};

class Conv1dImpl : public ConvNdImpl {
 public:
  Conv1dImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, ConvOptions o = {})
      : ConvNdImpl(1, in, out, std::move(kernel), std::move(o)) {}
};
class Conv2dImpl : public ConvNdImpl {
 public:
  Conv2dImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, ConvOptions o = {})
      : ConvNdImpl(2, in, out, std::move(kernel), std::move(o)) {}
};
class Conv3dImpl : public ConvNdImpl {
 public:
  Conv3dImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, ConvOptions o = {})
      : ConvNdImpl(3, in, out, std::move(kernel), std::move(o)) {}
};
TORCH_MODULE(Conv1d);
TORCH_MODULE(Conv2d);
TORCH_MODULE(Conv3d);

}  // namespace peft::nn
