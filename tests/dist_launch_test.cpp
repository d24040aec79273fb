// Beyond one process, the pieces that need no process group: torchrun's environment read and
// checked, and PyTorch's DistributedSampler split of an epoch.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "peft/dist/launch_env.h"
#include "peft/dist/sampler.h"
#include "peft/error.h"

namespace {

using Env = std::map<std::string, std::string>;

peft::dist::LaunchEnvironment read(const Env& env) {
  return peft::dist::read_launch_environment(
      [&](const std::string& name) -> std::optional<std::string> {
        auto it = env.find(name);
        return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
      });
}

// The message of the ConfigError `env` gives ("" when it gives none).
std::string error_of(const Env& env) {
  try {
    read(env);
  } catch (const peft::ConfigError& e) {
    return e.what();
  }
  return "";
}

const Env kTorchrun = {{"RANK", "3"},
                       {"WORLD_SIZE", "4"},
                       {"LOCAL_RANK", "1"},
                       {"LOCAL_WORLD_SIZE", "2"},
                       {"MASTER_ADDR", "node0"},
                       {"MASTER_PORT", "29500"},
                       {"TORCHELASTIC_RUN_ID", "job-7"}};

TEST(LaunchEnvironment, NoneSetIsOneProcess) {
  const auto env = read({{"MASTER_PORT", "junk"}});  // read only with RANK / WORLD_SIZE
  EXPECT_FALSE(env.distributed());
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.master_port, 0);
}

TEST(LaunchEnvironment, ReadsWhatTorchrunSets) {
  const auto env = read(kTorchrun);
  EXPECT_TRUE(env.distributed());
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "node0");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_EQ(env.run_id, "job-7");
  // One node: the local values default to the global ones; one rank needs no store address.
  const auto one_node = read(
      {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(one_node.local_rank, 1);
  EXPECT_EQ(one_node.local_world_size, 2);
  EXPECT_FALSE(read({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).distributed());
}

TEST(LaunchEnvironment, RefusesWhatTorchrunWouldNotSet) {
  const auto with = [](std::string name, std::string value) {
    Env e = kTorchrun;
    if (value == "<unset>") {
      e.erase(name);
    } else {
      e[name] = value;
    }
    return e;
  };
  const std::vector<std::pair<Env, std::string>> cases = {
      {with("WORLD_SIZE", "<unset>"), "RANK is set but WORLD_SIZE is not"},
      {with("RANK", "4"), "RANK=\"4\": expected an integer from 0 to 3"},
      {with("RANK", "-1"), "RANK=\"-1\""},
      {with("RANK", " 1"), "RANK=\" 1\""},
      {with("RANK", "1x"), "RANK=\"1x\""},
      {with("RANK", ""), "RANK=\"\""},
      {with("WORLD_SIZE", "0"), "WORLD_SIZE=\"0\": expected an integer from 1 to 65536"},
      {with("WORLD_SIZE", "99999999999999999999"), "WORLD_SIZE=\"99999999999999999999\""},
      {with("LOCAL_RANK", "2"), "LOCAL_RANK=\"2\": expected an integer from 0 to 1"},
      {with("LOCAL_WORLD_SIZE", "5"), "LOCAL_WORLD_SIZE=\"5\""},
      {with("LOCAL_RANK", "<unset>"), "needs LOCAL_RANK"},
      {with("MASTER_ADDR", "<unset>"), "missing: MASTER_ADDR"},
      {with("MASTER_PORT", "<unset>"), "missing: MASTER_PORT"},
      {with("MASTER_PORT", "0"), "MASTER_PORT=\"0\": expected an integer from 1 to 65535"},
      {with("MASTER_PORT", "65536"), "MASTER_PORT=\"65536\""},
      {with("MASTER_ADDR", ""), "MASTER_ADDR=\"\""},
      {with("MASTER_ADDR", "node 0"), "MASTER_ADDR=\"node 0\""},
  };
  for (const auto& [env, expected] : cases) {
    const std::string message = error_of(env);
    EXPECT_NE(message.find(expected), std::string::npos)
        << "expected \"" << expected << "\" in \"" << message << "\"";
  }
}

// torch.utils.data.DistributedSampler(range(10), num_replicas=4, rank=r, shuffle=False) gives
// [0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]; with drop_last=True [0, 4], [1, 5], [2, 6], [3, 7].
TEST(ShardOrder, IsDistributedSampler) {
  std::vector<int64_t> order(10);
  std::iota(order.begin(), order.end(), 0);
  const std::vector<std::vector<int64_t>> padded = {{0, 4, 8}, {1, 5, 9}, {2, 6, 0}, {3, 7, 1}};
  const std::vector<std::vector<int64_t>> dropped = {{0, 4}, {1, 5}, {2, 6}, {3, 7}};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(peft::dist::shard_order(order, r, 4), padded[static_cast<size_t>(r)]) << r;
    EXPECT_EQ(peft::dist::shard_order(order, r, 4, /*drop_last=*/true),
              dropped[static_cast<size_t>(r)])
        << r;
  }
  // A shuffled order is split by position, not by value.
  EXPECT_EQ(peft::dist::shard_order({7, 2, 9, 4, 1}, 1, 2), (std::vector<int64_t>{2, 4, 7}));
  // Fewer items than ranks: the padding repeats the order as often as needed
  // (DistributedSampler(range(2), num_replicas=5): [0], [1], [0], [1], [0]).
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(peft::dist::shard_order({0, 1}, r, 5), (std::vector<int64_t>{r % 2})) << r;
    EXPECT_TRUE(peft::dist::shard_order({0, 1}, r, 5, true).empty());
  }
  EXPECT_TRUE(peft::dist::shard_order({}, 0, 3).empty());
  EXPECT_EQ(peft::dist::shard_order(order, 0, 1), order);
  EXPECT_THROW(peft::dist::shard_order(order, 2, 2), peft::ConfigError);
  EXPECT_THROW(peft::dist::shard_order(order, 0, 0), peft::ConfigError);
}

}  // namespace
