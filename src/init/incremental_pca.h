// Incremental PCA on LibTorch tensors (private): sklearn's IncrementalPCA as PEFT ports it, with
// the seeded randomized SVD EVA uses. PEFT counterpart: peft.utils.incremental_pca.IncrementalPCA.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace peft::detail {

// A = U diag(S) Vh with U: (m, k), S: (k,), Vh: (k, n).
struct SvdResult {
  at::Tensor U;
  at::Tensor S;
  at::Tensor Vh;
};

// torch.svd_lowrank(A, q, niter) as torch 2.x computes it (Halko et al. 2009, algorithm 5.1: a
// range finder with niter power iterations on the tall orientation of A), returned with Vh = V^T; k
// = min(q, m, n) values. q may exceed min(m, n) (reduced QR absorbs it). The Gaussian test matrix
// comes from a private CPU generator seeded with `seed` (PEFT: torch.manual_seed(seed) around the
// call, then the global state is restored; the private generator gives the same draws on CPU and
// leaves the global generator alone); without a seed it comes from the default generator.
SvdResult svd_lowrank_seeded(const at::Tensor& A, int64_t q, int niter,
                             std::optional<uint64_t> seed);

struct IncrementalPcaOptions {
  int64_t n_components = 0;  // components kept; 0 = min(n_samples, n_features) of the first batch
  bool lowrank = false;      // randomized SVD (svd_lowrank_seeded) instead of a full SVD
  int64_t lowrank_q = 0;     // subspace size of the randomized SVD; 0 = 2 * n_components
  int lowrank_niter = 4;     // power iterations of the randomized SVD
  std::optional<uint64_t> lowrank_seed{};  // EVA uses 42
  int64_t batch_size = 0;                  // fit(): rows per partial_fit; 0 = 5 * n_features
};

// Mean-centred incremental PCA. Each partial_fit(X (n_samples, n_features)) updates the running
// mean and variance (float64) and re-factors [diag(S) components; X - batch mean; mean correction],
// so after the last chunk the components match a PCA of all rows seen (exactly when the data's
// centred rank <= n_components). The first partial_fit works in X's precision (float32 / float64;
// other dtypes become float32); later ones in float64 (the running mean is float64, as in PEFT).
class IncrementalPCA {
 public:
  explicit IncrementalPCA(IncrementalPcaOptions options = {});

  // Throws ConfigError when n_components > n_features, ShapeMismatchError when n_components >
  // n_samples, when X is not a matrix or when n_features differs from the first batch's.
  IncrementalPCA& partial_fit(const at::Tensor& X);
  // partial_fit over consecutive chunks of batch_size rows (sklearn gen_batches with min_batch_size
  // = n_components: a chunk that would leave a shorter tail is skipped and its rows join the tail).
  IncrementalPCA& fit(const at::Tensor& X);
  // (X - mean) @ components^T, computed in float64, returned in X's dtype.
  at::Tensor transform(const at::Tensor& X) const;

  bool fitted() const { return components_.defined(); }
  int64_t n_components() const { return n_components_; }
  int64_t n_samples_seen() const { return n_samples_seen_; }
  const at::Tensor& components() const { return components_; }  // (n_components, n_features)
  const at::Tensor& singular_values() const { return singular_values_; }  // (n_components,)
  const at::Tensor& mean() const { return mean_; }                        // (n_features,) float64
  const at::Tensor& var() const { return var_; }                          // (n_features,) float64
  const at::Tensor& explained_variance() const { return explained_variance_; }
  const at::Tensor& explained_variance_ratio() const { return explained_variance_ratio_; }
  const at::Tensor& noise_variance() const { return noise_variance_; }

 private:
  SvdResult svd(const at::Tensor& X) const;

  IncrementalPcaOptions options_;
  int64_t n_components_;
  int64_t n_features_ = 0;
  int64_t n_samples_seen_ = 0;
  at::Tensor components_;
  at::Tensor singular_values_;
  at::Tensor mean_;
  at::Tensor var_;
  at::Tensor explained_variance_;
  at::Tensor explained_variance_ratio_;
  at::Tensor noise_variance_;
};

}  // namespace peft::detail
