// The launcher environment of torchrun, read and checked.
#include "peft/dist/launch_env.h"

#include <cstdlib>

#include "peft/error.h"

namespace peft::dist {

namespace {

constexpr const char* kWhere = "launch environment";

// A plain decimal integer in [lo, hi]: digits only (no sign, spaces or suffix), as torchrun writes.
int parse_int(const std::string& name, const std::string& value, long long lo, long long hi) {
  bool digits = !value.empty() && value.size() <= 12;
  for (const char c : value) digits = digits && c >= '0' && c <= '9';
  const long long v = digits ? std::stoll(value) : -1;
  PEFT_CHECK(digits && v >= lo && v <= hi, ConfigError, kWhere,
             name << "=\"" << value << "\": expected an integer from " << lo << " to " << hi
                  << " (hint: torchrun sets it; set it by hand only with the others)");
  return static_cast<int>(v);
}

}  // namespace

LaunchEnvironment read_launch_environment(
    const std::function<std::optional<std::string>(const std::string&)>& get) {
  LaunchEnvironment env;
  const auto rank = get("RANK");
  const auto world = get("WORLD_SIZE");
  if (!rank && !world) return env;
  PEFT_CHECK(rank && world, ConfigError, kWhere,
             (rank ? "RANK is set but WORLD_SIZE is not" : "WORLD_SIZE is set but RANK is not")
                 << " (hint: set both, as torchrun does, or neither for one process)");
  env.world_size = parse_int("WORLD_SIZE", *world, 1, kMaxWorldSize);
  env.rank = parse_int("RANK", *rank, 0, env.world_size - 1);
  const auto local_world = get("LOCAL_WORLD_SIZE");
  env.local_world_size =
      local_world ? parse_int("LOCAL_WORLD_SIZE", *local_world, 1, env.world_size) : env.world_size;
  const auto local_rank = get("LOCAL_RANK");
  PEFT_CHECK(local_rank || env.local_world_size == env.world_size, ConfigError, kWhere,
             "LOCAL_WORLD_SIZE=" << env.local_world_size << " < WORLD_SIZE=" << env.world_size
                                 << " (several nodes) needs LOCAL_RANK");
  env.local_rank =
      local_rank ? parse_int("LOCAL_RANK", *local_rank, 0, env.local_world_size - 1) : env.rank;
  if (const auto id = get("TORCHELASTIC_RUN_ID")) env.run_id = *id;
  if (!env.distributed()) return env;
  const auto addr = get("MASTER_ADDR");
  const auto port = get("MASTER_PORT");
  PEFT_CHECK(addr && port, ConfigError, kWhere,
             "WORLD_SIZE=" << env.world_size << " needs MASTER_ADDR and MASTER_PORT (missing: "
                           << (addr ? "" : "MASTER_ADDR ") << (port ? "" : "MASTER_PORT")
                           << "; hint: the address and port of rank 0's store)");
  bool plain = !addr->empty() && addr->size() <= 253;
  for (const char c : *addr) plain = plain && c > ' ' && c < 127;
  PEFT_CHECK(plain, ConfigError, kWhere,
             "MASTER_ADDR=\"" << *addr
                              << "\": expected a host name or address (no spaces or control "
                                 "characters, at most 253 characters)");
  env.master_addr = *addr;
  env.master_port = parse_int("MASTER_PORT", *port, 1, 65535);
  return env;
}

LaunchEnvironment launch_environment_from_process() {
  return read_launch_environment([](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    return v ? std::optional<std::string>(v) : std::nullopt;
  });
}

}  // namespace peft::dist
