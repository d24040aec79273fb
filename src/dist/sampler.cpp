// PyTorch's DistributedSampler split of an epoch's order.
#include "peft/dist/sampler.h"

#include "peft/error.h"

namespace peft::dist {

std::vector<int64_t> shard_order(const std::vector<int64_t>& order, int rank, int world_size,
                                 bool drop_last) {
  PEFT_CHECK(
      world_size >= 1 && rank >= 0 && rank < world_size, ConfigError, "shard_order",
      "rank " << rank << " of world size " << world_size << ": expected 0 <= rank < world_size");
  const auto n = static_cast<int64_t>(order.size());
  const int64_t w = world_size;
  const int64_t per_rank = drop_last ? n / w : (n + w - 1) / w;
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(per_rank));
  for (int64_t k = 0; k < per_rank; ++k) {
    const int64_t i = rank + k * w;  // in the padded order; padding repeats it from the start
    out.push_back(order[static_cast<size_t>(i % n)]);
  }
  return out;
}

}  // namespace peft::dist
