// Adapter-ready Embedding. PEFT counterpart: lora.Embedding (tuners/lora/layer.py): the LoRA
// factors are parameters lora_embedding_A (r, num_embeddings) and lora_embedding_B (embedding_dim,
// r).
#pragma once

#include <torch/nn/modules/container/parameterdict.h>

#include <optional>

#include "peft/lora/layer.h"

namespace peft::nn {

// y = W[x] with W: (num_embeddings, embedding_dim); LoRA adds scaling * (A^T[x] @ B^T). No dropout
// and no input dtype cast on the LoRA path (as in PEFT).
class EmbeddingImpl : public LoraLayerImpl {
 public:
  // Init as PyTorch: W ~ N(0, 1), padding row zero.
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim,
                std::optional<int64_t> padding_idx = std::nullopt);
  at::Tensor forward(const at::Tensor& input) { return forward_with_adapters(input); }
  int64_t in_features() const override { return num_embeddings_; }
  int64_t out_features() const override { return embedding_dim_; }
  std::optional<int64_t> padding_idx() const { return padding_idx_; }
  at::Tensor base_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& bias) const override;
  // scaling * A^T[x] B^T for the token ids x.
  at::Tensor lora_forward(const at::Tensor& x, const std::string& adapter) const override;
  // (num_embeddings, embedding_dim) = (B @ A)^T * scaling.
  at::Tensor lora_delta_weight(const std::string& adapter) const override;

 protected:
  void create_adapter(const std::string& adapter, const AdapterSettings& settings) override;
  void destroy_adapter(const std::string& adapter) override;
  std::vector<std::pair<std::string, at::Tensor>> factor_tensors(
      const std::string& adapter) const override;
  at::Tensor add_adapter_output(at::Tensor result, const at::Tensor& x,
                                const std::string& adapter) const override;
  at::Tensor add_mixed_output(at::Tensor result, const at::Tensor& x,
                              const std::vector<AdapterRows>& groups) const override;

 private:
  int64_t num_embeddings_;
  int64_t embedding_dim_;
  std::optional<int64_t> padding_idx_;
  torch::nn::ParameterDict lora_embedding_A_{nullptr};
  torch::nn::ParameterDict lora_embedding_B_{nullptr};
};
TORCH_MODULE(Embedding);

}  // namespace peft::nn
