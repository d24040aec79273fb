// Weight-based LoRA initialisations (PEFT LoraLayer.pissa_init, olora_init, orthogonal_init,
// corda_init, lora_ga_init) and torch.svd_lowrank, which LibTorch's C++ API lacks.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

#include "init_weights.h"
#include "peft/error.h"

namespace peft::detail {

LowRankSvd svd_lowrank(const at::Tensor& M, int64_t q, int niter) {
  PEFT_CHECK(M.dim() == 2, ShapeMismatchError, "svd_lowrank",
             "expected a matrix; got " << M.dim() << " dimensions");
  const int64_t m = M.size(0);
  const int64_t n = M.size(1);
  PEFT_CHECK(q > 0 && q <= std::min(m, n), ConfigError, "svd_lowrank",
             "q = " << q << " must be in [1, min(" << m << ", " << n << ")]");
  // torch.svd_lowrank step by step (Halko et al. 2009, algorithm 5.1, as torch orders it), so that
  // the same random start gives the same factors, signs included: the range of M^T is sampled when
  // m < n or n > q (torch's "keep V small" branch), the one of M otherwise.
  const bool transposed = m < n || n > q;
  const at::Tensor A = transposed ? M.t() : M;
  // get_approximate_basis: randn(cols, q), then niter re-orthonormalised power iterations.
  at::Tensor X = torch::randn({A.size(1), q}, A.options());
  at::Tensor Q = std::get<0>(at::linalg_qr(at::matmul(A, X)));
  for (int i = 0; i < niter; ++i) {
    Q = std::get<0>(at::linalg_qr(at::matmul(A.t(), Q)));
    Q = std::get<0>(at::linalg_qr(at::matmul(A, Q)));
  }
  if (transposed) {
    // B_t = M Q (m, q); U S Vh = svd(B_t); V = Q Vh^T.
    auto [U, S, Vh] = at::linalg_svd(at::matmul(M, Q), /*full_matrices=*/false);
    return {U, S, at::matmul(Q, Vh.t())};
  }
  // B = Q^T M (q, n); U = Q U_B; V = Vh^T.
  auto [Ub, S, Vh] = at::linalg_svd(at::matmul(Q.t(), M), /*full_matrices=*/false);
  return {at::matmul(Q, Ub), S, Vh.t()};
}

WeightInit pissa_init(const at::Tensor& W, int r, double scaling, int niter) {
  at::Tensor Vr, Sr, Uhr;
  if (niter <= 0) {
    // W = V diag(S) Uh (PEFT's naming: W is (out, in), V the left factor)
    auto [V, S, Uh] = at::linalg_svd(W, /*full_matrices=*/false);
    Vr = V.slice(1, 0, r);
    Sr = S.slice(0, 0, r).clone();
    Uhr = Uh.slice(0, 0, r);
  } else {
    LowRankSvd l = svd_lowrank(W, r, niter);
    Vr = l.U;
    Sr = l.S.clone();
    Uhr = l.V.t();
  }
  Sr.div_(scaling);
  at::Tensor sq = at::sqrt(Sr);
  WeightInit out;
  out.A = (sq.unsqueeze(1) * Uhr).contiguous();  // diag(sqrt S) @ Uh
  out.B = (Vr * sq.unsqueeze(0)).contiguous();   // V @ diag(sqrt S)
  out.residual = W - scaling * at::matmul(out.B, out.A);
  return out;
}

WeightInit olora_init(const at::Tensor& W_stored, int r, double scaling) {
  auto [Q, R] = at::linalg_qr(W_stored);
  WeightInit out;
  out.A = R.slice(0, 0, r).contiguous();
  out.B = Q.slice(1, 0, r).contiguous();
  out.residual = W_stored - scaling * at::matmul(out.B, out.A);
  return out;
}

WeightInit orthogonal_init(int64_t in_features, int64_t out_features, int r) {
  PEFT_CHECK(
      r % 2 == 0, ConfigError, "lora",
      "Orthogonal initialization requires the LoRA rank to be even, got " << r << " instead.");
  // PEFT draws on the CPU generator in this order: X (r, r), then A's and B's Gaussian factors.
  at::Tensor X = torch::randn({r, r});
  at::Tensor Q = std::get<0>(at::linalg_qr(X));
  at::Tensor q_odd = Q.slice(0, 0, r, 2);   // rows 0, 2, 4, ...
  at::Tensor q_even = Q.slice(0, 1, r, 2);  // rows 1, 3, 5, ...
  WeightInit out;
  out.A = (at::mm(torch::randn({in_features, r / 2}), q_odd).t() / 10.0).contiguous();  // (r, in)
  out.B =
      (at::mm(torch::randn({r / 2, out_features}).t(), q_even) / 10.0).contiguous();  // (out, r)
  return out;  // base untouched: B A = 0 because even and odd rows of Q are orthogonal
}

WeightInit corda_init(const at::Tensor& W, int r, double scaling, const at::Tensor& U,
                      const at::Tensor& S, const at::Tensor& V) {
  PEFT_CHECK(U.size(1) == r && S.size(0) == r && V.size(1) == r, ShapeMismatchError, "corda",
             "CorDA decomposition has rank " << S.size(0) << " but the adapter's r is " << r);
  at::Tensor sq = at::sqrt(S / scaling);
  WeightInit out;
  out.A = (V.t() * sq.unsqueeze(1)).contiguous();  // (r, in): rows of V^T scaled
  out.B = (U * sq.unsqueeze(0)).contiguous();      // (out, r)
  out.residual = W - scaling * at::matmul(out.B, out.A);
  return out;
}

WeightInit mica_init(const at::Tensor& W, int r, bool embedding,
                     const std::vector<int64_t>& shown_shape) {
  const int64_t max_r = std::min(W.size(0), W.size(1));
  std::string shape = "(";
  for (size_t i = 0; i < shown_shape.size(); ++i)
    shape += (i ? ", " : "") + std::to_string(shown_shape[i]);
  shape += ")";
  PEFT_CHECK(r <= max_r, ConfigError, "lora",
             "MiCA requires `r` <= min("
                 << (embedding ? "num_embeddings, embedding_dim" : "in_features, out_features")
                 << ") but got r=" << r << " for " << (embedding ? "an embedding layer" : "a layer")
                 << " with weight shape " << shape << " (max usable r is " << max_r << ").");
  at::Tensor U = std::get<0>(at::linalg_svd(W, /*full_matrices=*/false));
  WeightInit out;
  out.B = U.slice(1, U.size(1) - r, U.size(1)).contiguous();
  out.A = at::zeros({r, W.size(1)}, W.options());
  return out;
}

WeightInit loraga_init(const at::Tensor& W, const at::Tensor& G, int r, double scaling,
                       const LoraGAConfig& c) {
  PEFT_CHECK(G.sizes() == W.sizes(), ShapeMismatchError, "lora_ga",
             "stored gradient has shape " << G.sizes() << " but the weight is " << W.sizes());
  const int64_t q = std::min<int64_t>(4 * r, std::min(G.size(0), G.size(1)));
  PEFT_CHECK(
      2 * r <= q, ConfigError, "lora_ga",
      "LoRA-GA needs 2r = " << 2 * r << " singular directions but the weight allows only " << q);
  LowRankSvd l = svd_lowrank(G, q, 4);
  at::Tensor U = l.U.slice(1, 0, 2 * r);
  at::Tensor S = l.S.slice(0, 0, 2 * r);
  at::Tensor Vh = l.V.t().slice(0, 0, 2 * r);
  at::Tensor A, B, SB;
  switch (c.direction) {
    case LoraGADirection::kArBr:
      A = Vh.slice(0, 1, 2 * r, 2);
      B = U.slice(1, 0, 2 * r, 2);
      SB = S.slice(0, 0, 2 * r, 2);
      break;
    case LoraGADirection::kA2rBr:
      A = Vh.slice(0, r, 2 * r);
      B = U.slice(1, 0, r);
      SB = S.slice(0, 0, r);
      break;
    case LoraGADirection::kArB2r:
      A = Vh.slice(0, 0, r);
      B = U.slice(1, r, 2 * r);
      SB = S.slice(0, r, 2 * r);
      break;
    case LoraGADirection::kRandom: {
      at::Tensor idx = torch::randperm(2 * r, at::TensorOptions().dtype(at::kLong))
                           .slice(0, 0, r)
                           .to(U.device());
      A = Vh.index_select(0, idx);
      B = U.index_select(1, idx);
      SB = S.index_select(0, idx);
      break;
    }
  }
  B = B * SB.unsqueeze(0);
  switch (c.scale) {
    case LoraGAScale::kStable:
      B = B * (std::pow(static_cast<double>(W.size(0)), 0.25) / std::sqrt(c.stable_gamma));
      break;
    case LoraGAScale::kWeightSvd: {
      const double smax = at::linalg_matrix_norm(W, 2).item<double>();
      B = B * (smax / SB[0].item<double>());
      break;
    }
    case LoraGAScale::kGdScale:
      A = A / scaling;
      B = B / scaling;
      break;
    case LoraGAScale::kUnit:
      break;
  }
  WeightInit out;
  out.A = A.contiguous();
  out.B = B.contiguous();
  out.residual = W - scaling * at::matmul(out.B, out.A);
  return out;
}

}  // namespace peft::detail
