#include "peft/runtime.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <utility>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "peft/error.h"

namespace peft {

namespace {

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

}  // namespace

ThreadPlan plan_threads(const ThreadEnvironment& env) {
  ThreadPlan plan;
  const int cores = std::max(1, env.physical_cores);
  const bool pthreads = env.blas == BlasThreading::kPthreads;
  if (env.requested > 0) {
    plan.intra_op = env.requested;
    if (pthreads && !env.openblas_num_threads_set) plan.blas = env.requested;
    plan.reason = "--threads " + std::to_string(env.requested);
    return plan;
  }
  if (pthreads && !env.openblas_num_threads_set) plan.blas = cores;
  if (env.omp_num_threads_set) {
    plan.intra_op = std::max(1, env.libtorch_threads);
    plan.reason = "OMP_NUM_THREADS";
  } else if (pthreads && !env.low_precision) {
    plan.intra_op = 1;
    plan.reason = "pthread OpenBLAS: its own pool does the GEMMs, one OpenMP thread beside it";
  } else {
    plan.intra_op = cores;
    plan.reason = "one thread per physical core";
  }
  return plan;
}

int cpu_quota_cpus(long long quota_us, long long period_us) {
  if (quota_us <= 0 || period_us <= 0) return 0;
  const long long cpus = (quota_us + period_us - 1) / period_us;
  return static_cast<int>(std::min<long long>(cpus, kMaxThreads));
}

namespace {

// The quota of this process's cgroup: v2's cpu.max ("max 100000" or "200000 100000"), else v1's
// cpu.cfs_quota_us / cpu.cfs_period_us; 0 = none found.
int cgroup_cpu_quota() {
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long long period = 0;
  if (v2 >> quota >> period) {
    if (quota == "max") return 0;
    try {
      return cpu_quota_cpus(std::stoll(quota), period);
    } catch (const std::exception&) {
      return 0;
    }
  }
  std::ifstream q1("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
      p1("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  long long q = 0;
  if (q1 >> q && p1 >> period) return cpu_quota_cpus(q, period);
  return 0;
}

}  // namespace

int physical_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::set<std::pair<std::string, std::string>> cores;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
      std::ifstream package(dir + "physical_package_id"), core(dir + "core_id");
      std::string p, c;
      if (!(package >> p) || !(core >> c)) {
        cores.clear();
        break;
      }
      cores.emplace(p, c);
    }
  }
  int n = cores.empty() ? std::max(1, static_cast<int>(std::thread::hardware_concurrency()))
                        : static_cast<int>(cores.size());
  if (const int quota = cgroup_cpu_quota(); quota > 0) n = std::min(n, quota);
  return n;
}

BlasThreading blas_threading() {
  using GetFn = int (*)();
  auto get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  if (get == nullptr) return BlasThreading::kUnknown;
  switch (get()) {
    case 0:
      return BlasThreading::kSequential;
    case 1:
      return BlasThreading::kPthreads;
    case 2:
      return BlasThreading::kOpenMP;
    default:
      return BlasThreading::kUnknown;
  }
}

ThreadPlan configure_threads(int requested, bool low_precision) {
  PEFT_CHECK(requested <= kMaxThreads, ConfigError, "runtime",
             "threads must be at most " << kMaxThreads << "; got " << requested
                                        << " (hint: 0 = one per physical core)");
  ThreadEnvironment env;
  env.requested = requested;
  env.physical_cores = physical_cores();
  env.libtorch_threads = at::get_num_threads();
  env.blas = blas_threading();
  env.omp_num_threads_set = env_set("OMP_NUM_THREADS") || env_set("MKL_NUM_THREADS");
  env.openblas_num_threads_set = env_set("OPENBLAS_NUM_THREADS") || env_set("GOTO_NUM_THREADS");
  env.low_precision = low_precision;
  const ThreadPlan plan = plan_threads(env);
  if (plan.intra_op != at::get_num_threads()) at::set_num_threads(plan.intra_op);
  if (plan.blas > 0) {
    using SetFn = void (*)(int);
    if (auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
      set(plan.blas);
  }
  return plan;
}

int set_num_threads(int threads) { return configure_threads(threads).intra_op; }

std::string blas_libraries() {
  std::set<std::string> libs;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    auto base = std::filesystem::path(path).filename().string();
    if (base.find("blas") == std::string::npos && base.find("lapack") == std::string::npos)
      continue;
    std::error_code ec;
    auto real = std::filesystem::canonical(path, ec);
    libs.insert(ec ? path : real.string());
  }
  std::string out;
  for (const auto& l : libs) {
    if (!out.empty()) out += ", ";
    out += l;
  }
  return out.empty() ? "unknown" : out;
}

bool keep_freed_memory_for_reuse() {
#ifdef __GLIBC__
  // Both must hold: without mmap every block comes from the heap, and the heap keeps its top.
  return mallopt(M_MMAP_MAX, 0) == 1 &&
         mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;
#else
  return false;
#endif
}

Bf16Autocast::Bf16Autocast(bool enabled) : enabled_(enabled) {
  if (!enabled_) return;
  previous_ = at::autocast::is_cpu_enabled();
  previous_dtype_ = static_cast<int>(at::autocast::get_autocast_cpu_dtype());
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  at::autocast::increment_nesting();
}

Bf16Autocast::~Bf16Autocast() {
  if (!enabled_) return;
  // The cast weights are cached for the outermost region only (as torch.autocast's __exit__).
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_cpu_enabled(previous_);
  at::autocast::set_autocast_cpu_dtype(static_cast<at::ScalarType>(previous_dtype_));
}

}  // namespace peft
