// Thread-local forward context (PEFT passes the same data through forward pre-hooks) and aLoRA's
// offsets / mask.
#include "peft/lora/forward_context.h"

#include <ATen/ATen.h>
#include <torch/types.h>

#include <algorithm>

#include "peft/error.h"

namespace peft::nn {
namespace {

thread_local ForwardContext g_context;

}  // namespace

const ForwardContext& current_forward_context() { return g_context; }

ForwardContextGuard::ForwardContextGuard(ForwardContext context) : previous_(std::move(g_context)) {
  g_context = std::move(context);
}

ForwardContextGuard::~ForwardContextGuard() { g_context = std::move(previous_); }

ForwardInputIdsGuard::ForwardInputIdsGuard(const at::Tensor& input_ids) {
  if (g_context.input_ids.defined() || !input_ids.defined()) return;
  g_context.input_ids = input_ids;
  installed_ = true;
}

ForwardInputIdsGuard::~ForwardInputIdsGuard() {
  if (installed_) g_context.input_ids = at::Tensor();
}

std::vector<std::optional<int64_t>> calculate_alora_offsets(
    const at::Tensor& input_ids, const std::vector<int64_t>& invocation_tokens) {
  PEFT_CHECK(input_ids.defined() && input_ids.dim() == 2, ShapeMismatchError, "alora",
             "input_ids must be (batch, seq) to find the aLoRA invocation sequence");
  PEFT_CHECK(!invocation_tokens.empty(), ConfigError, "alora", "alora_invocation_tokens is empty");
  at::Tensor ids = input_ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t batch = ids.size(0);
  const int64_t seq = ids.size(1);
  const auto n = static_cast<int64_t>(invocation_tokens.size());
  const int64_t* data = ids.data_ptr<int64_t>();
  std::vector<std::optional<int64_t>> out(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* row = data + b * seq;
    for (int64_t p = seq - n; p >= 0; --p) {
      if (std::equal(invocation_tokens.begin(), invocation_tokens.end(), row + p)) {
        out[static_cast<size_t>(b)] = seq - p;
        break;
      }
    }
  }
  return out;
}

at::Tensor alora_position_mask(const at::Tensor& like,
                               const std::vector<int64_t>& invocation_tokens) {
  const int64_t batch = like.size(0);
  const int64_t T = like.dim() >= 3 ? like.size(1) : 1;
  std::vector<std::optional<int64_t>> offsets;
  if (g_context.alora_offsets) {
    offsets = *g_context.alora_offsets;
  } else if (g_context.input_ids.defined()) {
    offsets = calculate_alora_offsets(g_context.input_ids, invocation_tokens);
  }
  PEFT_CHECK(
      offsets.empty() || static_cast<int64_t>(offsets.size()) == batch, ShapeMismatchError, "alora",
      "aLoRA offsets were given for " << offsets.size() << " rows but the batch has " << batch);
  std::vector<float> mask(static_cast<size_t>(batch * T), 0.0f);
  for (int64_t b = 0; b < static_cast<int64_t>(offsets.size()); ++b) {
    if (!offsets[static_cast<size_t>(b)]) continue;
    const int64_t o = std::min(*offsets[static_cast<size_t>(b)], T);
    for (int64_t t = T - o; t < T; ++t) mask[static_cast<size_t>(b * T + t)] = 1.0f;
  }
  at::Tensor m = torch::tensor(mask).view(like.dim() >= 3 ? std::vector<int64_t>{batch, T, 1}
                                                          : std::vector<int64_t>{batch, 1});
  return m.to(like.device(), like.scalar_type());
}

}  // namespace peft::nn
