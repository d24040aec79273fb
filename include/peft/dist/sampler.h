// Data parallelism's split of an epoch: PyTorch's DistributedSampler over an order that every rank
// computes alike (the epoch's shuffled permutation).
#pragma once

#include <cstdint>
#include <vector>

namespace peft::dist {

// The positions of `order` that `rank` of `world_size` reads, as torch.utils.data.
// DistributedSampler gives them: without drop_last the order is padded with its own beginning
// (repeated as often as needed) to a multiple of world_size, so that every rank gets
// ceil(n / world_size) items; with drop_last its tail is cut to floor(n / world_size) per rank.
// Then rank r takes items r, r + world_size, r + 2 * world_size, ... ConfigError when world_size <
// 1 or rank is not in [0, world_size).
std::vector<int64_t> shard_order(const std::vector<int64_t>& order, int rank, int world_size,
                                 bool drop_last = false);

}  // namespace peft::dist
