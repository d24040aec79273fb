// Incremental PCA (PEFT's port of sklearn's IncrementalPCA, src/peft/utils/incremental_pca.py) and
// the seeded torch.svd_lowrank it runs for EVA.
#include "incremental_pca.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../strings.h"
#include "peft/error.h"

namespace peft::detail {
namespace {

constexpr const char* kComponent = "incremental_pca";

// torch._lowrank.get_approximate_basis: an orthonormal basis Q (m, <= q) of A's range, refined by
// niter power iterations with re-orthonormalisation after every product.
at::Tensor approximate_basis(const at::Tensor& A, int64_t q, int niter,
                             std::optional<uint64_t> seed) {
  at::Tensor R;
  if (seed) {
    // Drawn on the CPU from a private generator so that the stream equals PEFT's after
    // torch.manual_seed(seed) and the global generator is not touched. Divergence from PEFT: on an
    // accelerator PEFT draws on the device's generator; here the CPU draws are moved there (same
    // distribution, other numbers).
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(*seed);
    R = at::randn({A.size(1), q}, gen, A.options().device(at::kCPU)).to(A.device());
  } else {
    R = at::randn({A.size(1), q}, A.options());
  }
  at::Tensor Q = std::get<0>(at::linalg_qr(at::matmul(A, R)));
  for (int i = 0; i < niter; ++i) {
    Q = std::get<0>(at::linalg_qr(at::matmul(A.t(), Q)));
    Q = std::get<0>(at::linalg_qr(at::matmul(A, Q)));
  }
  return Q;
}

// sklearn svd_flip(u_based_decision=False): the largest-|.| entry of every row of Vh becomes
// positive, so consecutive fits give comparable signs (EVA's convergence test compares them by
// cosine similarity).
void svd_flip_(at::Tensor& U, at::Tensor& Vh) {
  at::Tensor cols = at::argmax(at::abs(Vh), 1);
  at::Tensor rows = at::arange(Vh.size(0), cols.options());
  at::Tensor signs = at::sign(Vh.index({rows, cols}));
  U = U * signs.slice(0, 0, U.size(1)).view({1, -1});
  Vh = Vh * signs.view({-1, 1});
}

}  // namespace

SvdResult svd_lowrank_seeded(const at::Tensor& A, int64_t q, int niter,
                             std::optional<uint64_t> seed) {
  PEFT_CHECK(A.dim() == 2, ShapeMismatchError, kComponent,
             "svd_lowrank expects a matrix; got shape " << shape_string(A.sizes()));
  PEFT_CHECK(q > 0, ConfigError, kComponent, "svd_lowrank needs q > 0; got q = " << q);
  // torch 2.x: factor the tall orientation (A^T when m < n) and swap the factors back.
  const bool wide = A.size(0) < A.size(1);
  const at::Tensor M = wide ? A.t() : A;
  const at::Tensor Q = approximate_basis(M, q, niter, seed);
  auto [Ub, S, Vh] = at::linalg_svd(at::matmul(Q.t(), M), /*full_matrices=*/false);
  at::Tensor U = at::matmul(Q, Ub);  // (rows of M, k)
  if (wide) return {Vh.t(), S, U.t()};
  return {U, S, Vh};
}

IncrementalPCA::IncrementalPCA(IncrementalPcaOptions options)
    : options_(options), n_components_(options.n_components) {
  PEFT_CHECK(n_components_ >= 0, ConfigError, kComponent,
             "n_components must be >= 0; got " << n_components_);
  if (options_.lowrank) {
    PEFT_CHECK(options_.lowrank_q > 0 || n_components_ > 0, ConfigError, kComponent,
               "n_components must be specified when using lowrank mode with lowrank_q=None.");
    if (options_.lowrank_q == 0) options_.lowrank_q = 2 * n_components_;
    PEFT_CHECK(options_.lowrank_q >= n_components_, ConfigError, kComponent,
               "lowrank_q must be greater than or equal to n_components (lowrank_q = "
                   << options_.lowrank_q << ", n_components = " << n_components_ << ").");
  }
}

SvdResult IncrementalPCA::svd(const at::Tensor& X) const {
  if (options_.lowrank)
    return svd_lowrank_seeded(X, options_.lowrank_q, options_.lowrank_niter, options_.lowrank_seed);
  auto [U, S, Vh] = at::linalg_svd(X, /*full_matrices=*/false);
  return {U, S, Vh};
}

IncrementalPCA& IncrementalPCA::partial_fit(const at::Tensor& input) {
  torch::NoGradGuard no_grad;
  PEFT_CHECK(
      input.dim() == 2, ShapeMismatchError, kComponent,
      "partial_fit expects (n_samples, n_features); got shape " << shape_string(input.sizes()));
  const int64_t n_samples = input.size(0);
  const int64_t n_features = input.size(1);
  // _validate_data (copy=True): the caller's tensor is never modified.
  PEFT_CHECK(n_components_ <= n_features, ConfigError, kComponent,
             "n_components=" << n_components_ << " invalid for n_features=" << n_features
                             << ", need more rows than columns for IncrementalPCA processing.");
  PEFT_CHECK(n_components_ <= n_samples, ShapeMismatchError, kComponent,
             "n_components=" << n_components_
                             << " must be less or equal to the batch number of samples "
                             << n_samples);
  at::Tensor X =
      input.scalar_type() == at::kDouble ? input.clone() : input.to(at::kFloat, false, true);

  const bool first_pass = !fitted();
  if (first_pass) {
    n_features_ = n_features;
    if (n_components_ == 0) n_components_ = std::min(n_samples, n_features);
  }
  PEFT_CHECK(n_features == n_features_, ShapeMismatchError, kComponent,
             "Number of features of the new batch does not match the number of features of the "
             "first batch ("
                 << n_features << " vs " << n_features_ << ").");

  // _incremental_mean_and_var: running mean / variance in float64 (Chan et al.'s pairwise update).
  const auto last_count = static_cast<double>(n_samples_seen_);
  const auto new_count = static_cast<double>(n_samples);
  const int64_t total = n_samples_seen_ + n_samples;
  const auto total_count = static_cast<double>(total);
  const at::Tensor last_sum =
      first_pass ? at::zeros({n_features}, X.options().dtype(at::kDouble)) : mean_ * last_count;
  const at::Tensor new_sum = X.sum(0, false, at::kDouble);
  const at::Tensor col_mean = (last_sum + new_sum) / total_count;
  at::Tensor temp = X.to(at::kDouble) - new_sum / new_count;
  const at::Tensor correction = temp.sum(0, false, at::kDouble).square();
  at::Tensor new_unnormalized_var =
      temp.square().sum(0, false, at::kDouble) - correction / new_count;
  at::Tensor col_var;
  if (first_pass) {
    col_var = new_unnormalized_var / total_count;
  } else {
    const double last_over_new = last_count / new_count;
    col_var = (var_ * last_count + new_unnormalized_var +
               last_over_new / total_count * (last_sum / last_over_new - new_sum).square()) /
              total_count;
  }

  if (first_pass) {
    X.sub_(col_mean);  // in place: stays in X's precision
  } else {
    const at::Tensor col_batch_mean = at::mean(X, 0);
    X = X - col_batch_mean;
    const double factor = std::sqrt(last_count / total_count * new_count);
    const at::Tensor mean_correction = (factor * (mean_ - col_batch_mean)).view({1, -1});
    // torch.vstack promotes to float64 here (the running mean is float64).
    X = at::cat({(singular_values_.view({-1, 1}) * components_).to(at::kDouble), X.to(at::kDouble),
                 mean_correction.to(at::kDouble)},
                0);
  }

  SvdResult f = svd(X);
  svd_flip_(f.U, f.Vh);
  const at::Tensor s2 = f.S.square();
  const at::Tensor explained_variance = s2 / (total_count - 1.0);
  const at::Tensor explained_variance_ratio = s2 / at::sum(col_var * total_count);

  n_samples_seen_ = total;
  components_ = f.Vh.slice(0, 0, n_components_).contiguous();
  singular_values_ = f.S.slice(0, 0, n_components_).contiguous();
  mean_ = col_mean;
  var_ = col_var;
  explained_variance_ = explained_variance.slice(0, 0, n_components_);
  explained_variance_ratio_ = explained_variance_ratio.slice(0, 0, n_components_);
  if (n_components_ != n_samples && n_components_ != n_features) {
    noise_variance_ = explained_variance.slice(0, n_components_).mean();
  } else {
    noise_variance_ = at::zeros({}, explained_variance.options());
  }
  return *this;
}

IncrementalPCA& IncrementalPCA::fit(const at::Tensor& X) {
  PEFT_CHECK(X.dim() == 2, ShapeMismatchError, kComponent,
             "fit expects (n_samples, n_features); got shape " << shape_string(X.sizes()));
  const int64_t n = X.size(0);
  if (options_.batch_size == 0) options_.batch_size = 5 * X.size(1);
  const int64_t batch = options_.batch_size;
  // sklearn gen_batches(n, batch_size, min_batch_size = n_components).
  int64_t start = 0;
  for (int64_t i = 0; i < n / batch; ++i) {
    const int64_t end = start + batch;
    if (end + n_components_ > n) continue;
    partial_fit(X.slice(0, start, end));
    start = end;
  }
  if (start < n) partial_fit(X.slice(0, start, n));
  return *this;
}

at::Tensor IncrementalPCA::transform(const at::Tensor& X) const {
  PEFT_CHECK(fitted(), Error, kComponent, "transform called before partial_fit / fit");
  const at::Tensor centred = X - mean_.to(X.scalar_type());
  return at::mm(centred.to(at::kDouble), components_.to(at::kDouble).t()).to(X.scalar_type());
}

}  // namespace peft::detail
