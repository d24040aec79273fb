// Adapter-ready Embedding (PEFT lora.Embedding).
#include "peft/lora/embedding.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include "init_weights.h"
#include "peft/error.h"

namespace peft::nn {

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim,
                             std::optional<int64_t> padding_idx)
    : LoraLayerImpl(LayerKind::kEmbedding),
      num_embeddings_(num_embeddings),
      embedding_dim_(embedding_dim) {
  PEFT_CHECK(num_embeddings > 0 && embedding_dim > 0, ConfigError, "nn::Embedding",
             "sizes must be positive: num_embeddings " << num_embeddings << ", embedding_dim "
                                                       << embedding_dim);
  if (padding_idx) {
    int64_t p = *padding_idx < 0 ? *padding_idx + num_embeddings : *padding_idx;
    PEFT_CHECK(p >= 0 && p < num_embeddings, ConfigError, "nn::Embedding",
               "padding_idx " << *padding_idx << " outside [0, " << num_embeddings << ")");
    padding_idx_ = p;
  }
  at::Tensor w = torch::randn({num_embeddings, embedding_dim});
  if (padding_idx_) {
    torch::NoGradGuard no_grad;
    w[*padding_idx_].zero_();
  }
  register_base(w, at::Tensor());
}

void EmbeddingImpl::create_adapter(const std::string& adapter, const AdapterSettings& s) {
  using K = InitLoraWeights::Kind;
  PEFT_CHECK(!s.lora_bias, ConfigError, "lora", "lora_bias=True is not supported for Embedding.");
  if (!lora_embedding_A_) {
    lora_embedding_A_ = register_module("lora_embedding_A", torch::nn::ParameterDict());
    lora_embedding_B_ = register_module("lora_embedding_B", torch::nn::ParameterDict());
  }
  auto opts = weight().options().requires_grad(false);
  torch::NoGradGuard no_grad;
  // PEFT creates both with torch.randn; init False keeps that, every other init (true, "gaussian"
  // and strings Embedding does not handle) sets A = 0 and B ~ N(0, 1): the opposite of Linear.
  at::Tensor A = torch::randn({s.r, num_embeddings_}, opts);
  at::Tensor B = torch::randn({embedding_dim_, s.r}, opts);
  if (s.init_lora_weights.kind == K::kMica) {
    // PEFT Embedding.mica_init: the SVD of W^T (embedding_dim, num_embeddings); B its last r left
    // singular vectors, A = 0; the base is left as it is.
    const auto dtype = weight().scalar_type();
    PEFT_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
               UnsupportedError, "lora",
               "Please initialize MiCA under float32, float16, or bfloat16; the embedding is "
                   << c10::toString(dtype));
    const detail::WeightInit wi =
        detail::mica_init(weight().detach().to(at::kFloat).t(), s.r, /*embedding=*/true,
                          {num_embeddings_, embedding_dim_});
    A.copy_(wi.A);
    B.copy_(wi.B);
  } else if (s.init_lora_weights.kind != K::kFalse) {
    A.zero_();
    B.normal_(0.0, 1.0);
  }
  lora_embedding_A_->insert(adapter, A);
  lora_embedding_B_->insert(adapter, B);
}

void EmbeddingImpl::destroy_adapter(const std::string& adapter) {
  if (lora_embedding_A_ && lora_embedding_A_->contains(adapter)) {
    lora_embedding_A_->pop(adapter);
    lora_embedding_B_->pop(adapter);
  }
}

std::vector<std::pair<std::string, at::Tensor>> EmbeddingImpl::factor_tensors(
    const std::string& adapter) const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (lora_embedding_A_ && lora_embedding_A_->contains(adapter)) {
    out.emplace_back("lora_embedding_A", lora_embedding_A_->get(adapter));
    out.emplace_back("lora_embedding_B", lora_embedding_B_->get(adapter));
  }
  return out;
}

at::Tensor EmbeddingImpl::base_forward(const at::Tensor& x, const at::Tensor& w,
                                       const at::Tensor&) const {
  return at::embedding(w, x, padding_idx_.value_or(-1));
}

at::Tensor EmbeddingImpl::lora_forward(const at::Tensor& x, const std::string& adapter) const {
  const at::Tensor& A = lora_embedding_A_->get(adapter);                    // (r, num_embeddings)
  const at::Tensor& B = lora_embedding_B_->get(adapter);                    // (embedding_dim, r)
  const at::Tensor h = at::embedding(A.t(), x, padding_idx_.value_or(-1));  // (..., r)
  return at::matmul(h, B.t()) * scaling(adapter);
}

at::Tensor EmbeddingImpl::add_adapter_output(at::Tensor result, const at::Tensor& x,
                                             const std::string& adapter) const {
  // No dropout and no input cast on an embedding's LoRA path (as in PEFT).
  return result + lora_forward(x, adapter).to(result.scalar_type());
}

at::Tensor EmbeddingImpl::lora_delta_weight(const std::string& adapter) const {
  // (num_embeddings, embedding_dim) = ((B @ A) * scaling)^T
  return scaled_product(lora_embedding_B_->get(adapter), lora_embedding_A_->get(adapter), adapter)
      .t()
      .contiguous();
}

}  // namespace peft::nn
