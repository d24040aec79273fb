// The gathered mixed-batch kernel: rows grouped by adapter (padded to equal groups), one bmm over
// every group for A and one for B, the results added back to their rows. Cost follows the rows, not
// the number of adapters; the stacked factors are cached per adapter set.
#include "mixed_kernel.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <algorithm>

#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"

namespace peft::nn {
namespace mixed {

namespace {

GatherPlan build_gather_plan(const std::vector<AdapterRows>& groups, int64_t batch,
                             c10::Device device) {
  GatherPlan plan;
  plan.groups = static_cast<int64_t>(groups.size());
  for (const auto& g : groups)
    plan.per_group = std::max(plan.per_group, static_cast<int64_t>(g.rows.size()));
  std::vector<int64_t> gather, positions, rows;
  bool padded = false;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& r = groups[g].rows;
    for (int64_t j = 0; j < plan.per_group; ++j) {
      const bool real = j < static_cast<int64_t>(r.size());
      gather.push_back(real ? r[static_cast<size_t>(j)] : r.front());
      if (real) {
        positions.push_back(static_cast<int64_t>(g) * plan.per_group + j);
        rows.push_back(r[static_cast<size_t>(j)]);
      } else {
        padded = true;
      }
    }
  }
  plan.identity = plan.groups == 1 && plan.per_group == batch;  // rows are ascending and distinct
  if (!padded) {
    const auto& r0 = groups.front().rows;
    plan.first = r0.front();
    plan.row_stride = r0.size() > 1 ? r0[1] - r0[0] : 1;
    plan.group_stride = groups.size() > 1 ? groups[1].rows.front() - plan.first : 1;
    plan.affine = plan.row_stride > 0 && plan.group_stride > 0;
    for (size_t g = 0; plan.affine && g < groups.size(); ++g) {
      for (size_t j = 0; plan.affine && j < groups[g].rows.size(); ++j) {
        plan.affine = groups[g].rows[j] == plan.first +
                                               static_cast<int64_t>(g) * plan.group_stride +
                                               static_cast<int64_t>(j) * plan.row_stride;
      }
    }
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (!plan.identity) {
    plan.gather = at::tensor(gather, opts).to(device);
    plan.rows = at::tensor(rows, opts).to(device);
    if (padded) plan.positions = at::tensor(positions, opts).to(device);
  }
  return plan;
}

// The last plan built on this thread: every LoRA layer of one forward has the same row groups, so
// the index tensors are made once per forward instead of once per layer (the tensors are only
// read).
struct LastPlan {
  std::vector<std::vector<int64_t>> rows;
  int64_t batch = -1;
  c10::Device device = c10::Device(c10::kCPU);
  GatherPlan plan;
};

}  // namespace

GatherPlan make_gather_plan(const std::vector<AdapterRows>& groups, int64_t batch,
                            c10::Device device) {
  thread_local LastPlan last;
  bool same = last.batch == batch && last.device == device && last.rows.size() == groups.size();
  for (size_t g = 0; same && g < groups.size(); ++g) same = last.rows[g] == groups[g].rows;
  if (!same) {
    last.plan = build_gather_plan(groups, batch, device);
    last.rows.clear();
    for (const auto& g : groups) last.rows.push_back(g.rows);
    last.batch = batch;
    last.device = device;
  }
  return last.plan;
}

at::Tensor scatter_groups(at::Tensor result, const at::Tensor& y, const GatherPlan& plan) {
  const auto sizes = result.sizes().vec();
  at::Tensor y2 = y.reshape({plan.groups * plan.per_group, -1});
  if (plan.positions.defined()) y2 = y2.index_select(0, plan.positions);
  y2 = y2.to(result.scalar_type());
  at::Tensor r2 = result.reshape({sizes[0], -1});
  if (plan.identity) {
    r2.add_(y2);
  } else {
    r2.index_add_(0, plan.rows, y2);
  }
  return r2.view(sizes);
}

bool gathered_kernel_applies(const LoraLayerImpl& layer, const std::vector<AdapterRows>& groups) {
  if (current_forward_context().mixed_batch_kernel != MixedBatchKernel::kGathered) return false;
  if (at::GradMode::is_enabled()) return false;
  std::optional<c10::ScalarType> dtype;
  int64_t most = 0;
  for (const auto& g : groups) {
    const auto& s = layer.adapter_settings(g.adapter);
    if (layer.variant(g.adapter) || (s.lora_dropout > 0.0 && layer.is_training())) return false;
    const auto t = layer.adapter_tensors(g.adapter).front().second.scalar_type();
    if (dtype && *dtype != t) return false;
    dtype = t;
    most = std::max(most, static_cast<int64_t>(g.rows.size()));
  }
  int64_t used = 0;
  for (const auto& g : groups) used += static_cast<int64_t>(g.rows.size());
  return most * static_cast<int64_t>(groups.size()) <= 2 * used;
}

namespace {

// What a stack is built from: the groups' adapters, their tensors (from `sources_of(adapter)`) and
// scalings.
struct StackInputs {
  std::vector<std::string> adapters;
  std::vector<std::vector<at::Tensor>> sources;
  std::vector<double> scalings;
};
template <class SourcesOf>
StackInputs stack_inputs(const LoraLayerImpl& layer, const std::vector<AdapterRows>& groups,
                         SourcesOf sources_of) {
  StackInputs in;
  for (const auto& g : groups) {
    in.adapters.push_back(g.adapter);
    in.sources.push_back(sources_of(g.adapter));
    in.scalings.push_back(layer.scaling(g.adapter));
  }
  return in;
}

// The cached stack of `adapters`, rebuilt by `build` when missing or when a source tensor or
// scaling changed.
template <class Build>
StackedFactors cached_stack(MixedCache& cache, const std::vector<std::string>& adapters,
                            const std::vector<std::vector<at::Tensor>>& sources,
                            const std::vector<double>& scalings, Build build) {
  std::vector<const void*> ptrs;
  std::vector<int64_t> versions;
  for (const auto& list : sources) {
    for (const auto& t : list) {
      ptrs.push_back(t.unsafeGetTensorImpl());
      versions.push_back(static_cast<int64_t>(t._version()));
    }
  }
  std::lock_guard<std::mutex> lock(cache.mutex);
  auto it = cache.entries.find(adapters);
  if (it != cache.entries.end() && it->second.sources == ptrs && it->second.versions == versions &&
      it->second.scalings == scalings)
    return it->second;
  if (cache.entries.size() >= MixedCache::kMaxEntries) cache.entries.clear();
  StackedFactors f = build();
  f.sources = std::move(ptrs);
  f.versions = std::move(versions);
  f.scalings = scalings;
  cache.entries[adapters] = f;
  return f;
}

// (s * B)^T padded to r_max rows: (r_max, out) from B (out, r).
at::Tensor scaled_bt(const at::Tensor& B, double s, int64_t r_max) {
  return at::constant_pad_nd(B.detach() * s, {0, r_max - B.size(1)}).t();
}

}  // namespace
}  // namespace mixed

at::Tensor LinearImpl::add_mixed_output(at::Tensor result, const at::Tensor& x,
                                        const std::vector<AdapterRows>& groups) const {
  const int64_t batch = x.size(0);
  if (!mixed::gathered_kernel_applies(*this, groups))
    return add_mixed_output_loop(std::move(result), x, groups);
  const auto in = mixed::stack_inputs(*this, groups, [&](const std::string& a) {
    auto Bm = lora_B_->get<FactorImpl>(a);
    std::vector<at::Tensor> v{lora_A_->get<FactorImpl>(a)->weight, Bm->weight};
    if (Bm->bias.defined()) v.push_back(Bm->bias);
    return v;
  });
  const auto& sources = in.sources;
  const auto& scalings = in.scalings;
  const auto f = mixed::cached_stack(*mixed_cache_, in.adapters, sources, scalings, [&] {
    mixed::StackedFactors out;
    int64_t r_max = 0;
    bool any_bias = false;
    for (const auto& s : sources) {
      r_max = std::max(r_max, s[0].size(0));
      any_bias = any_bias || s.size() > 2;
    }
    std::vector<at::Tensor> As, Bs, biases;
    for (size_t i = 0; i < sources.size(); ++i) {
      const auto& A = sources[i][0];
      As.push_back(at::constant_pad_nd(A.detach(), {0, 0, 0, r_max - A.size(0)}));
      Bs.push_back(mixed::scaled_bt(sources[i][1], scalings[i], r_max));
      if (any_bias) {
        biases.push_back(sources[i].size() > 2 ? sources[i][2].detach() * scalings[i]
                                               : at::zeros({out_features_}, A.options()));
      }
    }
    out.A = at::stack(As);
    out.B = at::stack(Bs).contiguous();
    if (any_bias) out.bias = at::stack(biases).unsqueeze(1);
    return out;
  });
  const auto plan = mixed::make_gather_plan(groups, batch, x.device());
  at::Tensor x3 = x.reshape({batch, -1, in_features_});
  if (x3.scalar_type() != f.A.scalar_type()) x3 = x3.to(f.A.scalar_type());
  const int64_t L = x3.size(1);
  if (plan.identity && result.scalar_type() == f.A.scalar_type() && result.is_contiguous()) {
    // Every row has the same adapter: the plain path's fused GEMM into the output buffer.
    at::Tensor out2d = result.view({-1, out_features_});
    if (f.bias.defined()) out2d.add_(f.bias[0]);
    out2d.addmm_(at::mm(x3.reshape({-1, in_features_}), f.A[0].t()), f.B[0]);
    return result;
  }
  if (plan.affine && (L == 1 || plan.row_stride == 1) && x3.is_contiguous() &&
      result.is_contiguous() && result.scalar_type() == f.A.scalar_type()) {
    // Rows sorted by adapter, or round robin: each group's rows are a strided view of x and of the
    // output, and B's product is added into the output in place.
    const int64_t rows = plan.per_group * L;
    const auto grid = [&](const at::Tensor& t, int64_t width) {
      return t.as_strided(
          {plan.groups, rows, width},
          {plan.group_stride * L * width, (L == 1 ? plan.row_stride : 1) * width, 1},
          t.storage_offset() + plan.first * L * width);
    };
    at::Tensor out = grid(result, out_features_);
    at::Tensor h = at::bmm(grid(x3, in_features_), f.A.transpose(1, 2));  // (groups, m L, r)
    if (f.bias.defined()) out.add_(f.bias);
    out.baddbmm_(h, f.B);
    return result;
  }
  at::Tensor xg =
      plan.identity
          ? x3.reshape({1, batch * L, in_features_})
          : x3.index_select(0, plan.gather).view({plan.groups, plan.per_group * L, in_features_});
  at::Tensor h = at::bmm(xg, f.A.transpose(1, 2));  // (groups, m L, r)
  at::Tensor y = f.bias.defined() ? at::baddbmm(f.bias, h, f.B) : at::bmm(h, f.B);
  return mixed::scatter_groups(std::move(result), y, plan);
}

at::Tensor EmbeddingImpl::add_mixed_output(at::Tensor result, const at::Tensor& x,
                                           const std::vector<AdapterRows>& groups) const {
  const int64_t batch = x.size(0);
  if (!mixed::gathered_kernel_applies(*this, groups))
    return add_mixed_output_loop(std::move(result), x, groups);
  const auto in = mixed::stack_inputs(*this, groups, [&](const std::string& a) {
    return std::vector<at::Tensor>{lora_embedding_A_->get(a), lora_embedding_B_->get(a)};
  });
  const auto& sources = in.sources;
  const auto& scalings = in.scalings;
  const auto f = mixed::cached_stack(*mixed_cache_, in.adapters, sources, scalings, [&] {
    mixed::StackedFactors out;
    int64_t r_max = 0;
    for (const auto& s : sources) r_max = std::max(r_max, s[0].size(0));
    std::vector<at::Tensor> As, Bs;
    for (size_t i = 0; i < sources.size(); ++i) {
      const auto& A = sources[i][0];  // (r, num_embeddings)
      As.push_back(at::constant_pad_nd(A.detach().t(), {0, r_max - A.size(0)}));
      Bs.push_back(mixed::scaled_bt(sources[i][1], scalings[i], r_max));
    }
    out.A = at::cat(As).contiguous();  // (n * num_embeddings, r_max)
    out.B = at::stack(Bs).contiguous();
    return out;
  });
  const auto plan = mixed::make_gather_plan(groups, batch, x.device());
  at::Tensor ids = x.reshape({batch, -1});
  const int64_t L = ids.size(1);
  if (plan.identity && result.scalar_type() == f.A.scalar_type() && result.is_contiguous()) {
    result.view({-1, embedding_dim_}).addmm_(at::embedding(f.A, ids.reshape({-1})), f.B[0]);
    return result;
  }
  ids = plan.identity ? ids.reshape({1, batch * L})
                      : ids.index_select(0, plan.gather).view({plan.groups, -1});
  at::Tensor offsets =
      at::arange(plan.groups, ids.options()).mul_(num_embeddings_).view({plan.groups, 1});
  at::Tensor h = at::embedding(f.A, ids + offsets);  // (groups, m L, r)
  return mixed::scatter_groups(std::move(result), at::bmm(h, f.B), plan);
}

}  // namespace peft::nn
