// The gathered mixed-batch kernel's pieces: the per-layer cache of stacked factors and the row plan
// that groups a batch by adapter for one batched product (in the spirit of Punica's SGMV, with
// LibTorch's bmm).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "peft/lora/forward_context.h"
#include "peft/lora/layer.h"

namespace peft::nn::mixed {

// The factors of a set of adapters stacked for bmm, ranks zero-padded to the largest, scaling
// folded into B.
struct StackedFactors {
  at::Tensor
      A;  // Linear: (n, r, in); Embedding: (n * num_embeddings, r) (A^T of each adapter, stacked)
  at::Tensor B;     // (n, r, out): (s * B)^T of each adapter
  at::Tensor bias;  // (n, 1, out): s * lora_B.bias (zero where absent), or undefined when no
                    // adapter has one
  // What the stack was built from, to notice parameters replaced or updated in place.
  std::vector<const void*> sources;
  std::vector<int64_t> versions;
  std::vector<double> scalings;
};

// Per layer, keyed by the adapter list of a batch; bounded (emptied when kMaxEntries is reached).
struct MixedCache {
  static constexpr size_t kMaxEntries = 16;
  std::mutex mutex;
  std::map<std::vector<std::string>, StackedFactors> entries;
  void clear() {
    std::lock_guard<std::mutex> lock(mutex);
    entries.clear();
  }
};

// The rows of a batch grouped by adapter and padded to equal group sizes: group g occupies entries
// [g * m, (g + 1) * m) of `gather` (batch rows; padding repeats the group's first row).
struct GatherPlan {
  int64_t groups = 0;
  int64_t per_group = 0;  // m
  at::Tensor gather;      // (groups * m) int64
  at::Tensor positions;   // the non-padding entries (int64), undefined when there is no padding
  at::Tensor rows;        // the batch row of each non-padding entry, in the same order
  bool identity = false;  // one group holding every row in order: no gather or scatter needed
  // Groups of equal size laid out as a grid over the batch: row(g, j) = first + g * group_stride +
  // j * row_stride (rows sorted by adapter: row_stride 1; round robin: group_stride 1). The rows
  // are then strided views of the input and the output, with no gather or scatter.
  bool affine = false;
  int64_t first = 0, group_stride = 0, row_stride = 0;
};
GatherPlan make_gather_plan(const std::vector<AdapterRows>& groups, int64_t batch,
                            c10::Device device);

// Adds y (groups, m * L, out), the groups' outputs in plan order, to result (batch, ..., out) rows.
at::Tensor scatter_groups(at::Tensor result, const at::Tensor& y, const GatherPlan& plan);

// True when the gathered kernel applies: kernel == kGathered, no autograd, every adapter plain LoRA
// (no variant) with the same factor dtype, and padding that at most doubles the rows.
bool gathered_kernel_applies(const LoraLayerImpl& layer, const std::vector<AdapterRows>& groups);

}  // namespace peft::nn::mixed
