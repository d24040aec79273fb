// The launcher environment of PyTorch's torchrun (and of `peft train --nproc-per-node`): RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and TORCHELASTIC_RUN_ID,
// read and checked before any process group is made.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace peft::dist {

struct LaunchEnvironment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  // empty in a single process
  int master_port = 0;      // 0 in a single process
  std::string run_id;       // TORCHELASTIC_RUN_ID, or empty
  bool distributed() const { return world_size > 1; }
};

// The most processes a run may have (c10d's Gloo and NCCL run far fewer; a larger WORLD_SIZE is a
// typo, and would size per-rank tables).
inline constexpr int kMaxWorldSize = 1 << 16;

// Reads the variables through `get` (a variable that is unset gives nullopt). Neither RANK nor
// WORLD_SIZE set: one process. Otherwise both are required, and MASTER_ADDR / MASTER_PORT too when
// WORLD_SIZE > 1; LOCAL_RANK and LOCAL_WORLD_SIZE default to RANK and WORLD_SIZE (one node).
// ConfigError naming the variable, its value and what was expected: a value that is not a plain
// decimal integer, 0 <= RANK < WORLD_SIZE <= kMaxWorldSize, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <=
// WORLD_SIZE, a port outside 1..65535, an empty or whitespace-holding MASTER_ADDR.
LaunchEnvironment read_launch_environment(
    const std::function<std::optional<std::string>(const std::string&)>& get);

// read_launch_environment over this process's environment (getenv).
LaunchEnvironment launch_environment_from_process();

}  // namespace peft::dist
