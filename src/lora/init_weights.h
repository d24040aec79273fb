// Initialisation helpers shared by the LoRA layer types (PEFT reset_lora_parameters and nn.Module
// defaults).
#pragma once

#include <ATen/core/Tensor.h>

#include "peft/config.h"

namespace peft::detail {

// nn.Linear / nn.ConvNd default weight init: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in),
// 1/sqrt(fan_in)).
void default_weight_init_(at::Tensor& weight);
// nn.Linear / nn.ConvNd default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's
// fan_in.
void default_bias_init_(at::Tensor& bias, const at::Tensor& weight);

// Initialises A, B (and B's bias) of a Linear or Conv LoRA per init_lora_weights, following PEFT's
// RNG order: constructor init of A, of B (and bias), then the re-init. For the weight-based inits
// (PiSSA, OLoRA, ...) only the constructor init happens here.
void init_linear_like_factors(const InitLoraWeights& init, int r, at::Tensor& A, at::Tensor& B,
                              at::Tensor& B_bias, const char* layer_kind);

// ---- weight-based initialisations of a Linear adapter (PEFT LoraLayer.pissa_init, olora_init,
// ...) ---- W is the base weight as an (out, in) float32 matrix (fan_in_fan_out already undone); A
// is (r, in), B (out, r). `residual` is the new base weight (out, in) for the inits that mutate it,
// undefined otherwise.
struct WeightInit {
  at::Tensor A;
  at::Tensor B;
  at::Tensor residual;
};

// torch.svd_lowrank(M, q, niter): randomized subspace iteration (Halko et al. 2009, algorithm 5.1
// with power iterations); U (m, q), S (q), V (n, q) with M ~ U diag(S) V^T. Draws from LibTorch's
// generator.
struct LowRankSvd {
  at::Tensor U;
  at::Tensor S;
  at::Tensor V;
};
LowRankSvd svd_lowrank(const at::Tensor& M, int64_t q, int niter);

// PiSSA: top-r singular triplets (full SVD when niter == 0, else svd_lowrank(q = r, niter)); S /
// scaling split as sqrt between A and B; residual W - scaling B A.
WeightInit pissa_init(const at::Tensor& W, int r, double scaling, int niter);
// OLoRA: Q, R = qr(W as stored); A = R[:r], B = Q[:, :r]; residual W - scaling B A (no scaling
// division). PEFT runs it on the weight as stored, so for a fan_in_fan_out layer the caller passes
// the stored matrix.
WeightInit olora_init(const at::Tensor& W_stored, int r, double scaling);
// Orthogonal (r even): A, B with orthogonal row / column spaces so that B A = 0; base untouched.
WeightInit orthogonal_init(int64_t in_features, int64_t out_features, int r);
// MiCA: B = the last r left singular vectors of W (out, in) (smallest singular values, unscaled),
// A = 0 (r, in); the base weight is left as it is. `what` names the layer kind in the error for r >
// min(W's sizes) ("Linear" / "Embedding": PEFT's two wordings).
WeightInit mica_init(const at::Tensor& W, int r, bool embedding,
                     const std::vector<int64_t>& shown_shape);
// CorDA from the layer's stored decomposition (U (out, r), S (r), V (in, r), already the r
// components the method kept): S / scaling split as sqrt; A = V^T sqrt(S), B = U sqrt(S); residual
// W - scaling B A.
WeightInit corda_init(const at::Tensor& W, int r, double scaling, const at::Tensor& U,
                      const at::Tensor& S, const at::Tensor& V);
// LoRA-GA from the layer's averaged gradient G (same layout as W, (out, in)): direction and scale
// per config; residual W - scaling B A.
WeightInit loraga_init(const at::Tensor& W, const at::Tensor& G, int r, double scaling,
                       const LoraGAConfig& config);

}  // namespace peft::detail
