// Process-wide runtime settings: LibTorch's intra-op thread count and which BLAS LibTorch runs on.
#pragma once

#include <string>

namespace peft {

// How the BLAS that LibTorch calls runs its threads (OpenBLAS's openblas_get_parallel()).
enum class BlasThreading {
  kUnknown,     // not OpenBLAS, or an OpenBLAS that does not say
  kSequential,  // single-threaded
  kPthreads,    // its own pthread pool, next to LibTorch's OpenMP pool
  kOpenMP       // LibTorch's OpenMP pool, shared (scripts/setup.sh selects this build)
};

// What plan_threads decides from.
struct ThreadEnvironment {
  int requested = 0;         // --threads; 0 = choose
  int physical_cores = 1;    // in this process's CPU affinity mask
  int libtorch_threads = 1;  // LibTorch's intra-op count as it stands (reflects OMP_NUM_THREADS)
  BlasThreading blas = BlasThreading::kUnknown;
  bool omp_num_threads_set = false;       // OMP_NUM_THREADS or MKL_NUM_THREADS in the environment
  bool openblas_num_threads_set = false;  // OPENBLAS_NUM_THREADS or GOTO_NUM_THREADS
  bool low_precision = false;             // bf16 autocast or a bf16 / fp16 model: oneDNN's GEMMs,
                                          // which run on the OpenMP pool
};

// The thread counts to apply, and why (one line).
struct ThreadPlan {
  int intra_op = 1;  // LibTorch's intra-op (OpenMP) threads: also the GEMM threads of an OpenMP
                     // OpenBLAS and of oneDNN (bf16)
  int blas = 0;      // OpenBLAS's own pthread pool; 0 = leave it as it is
  std::string reason;
};

// One pool, the fastest configuration measured (issue 17; figures in docs/performance.md). With an
// OpenMP OpenBLAS every GEMM and elementwise op shares LibTorch's OpenMP threads, one per physical
// core (LibTorch's own default halves the logical CPU count, assuming SMT). With a pthread
// OpenBLAS, OpenMP workers spinning next to OpenBLAS's pool slow a step about 2x, so LibTorch keeps
// one thread and OpenBLAS gets one per physical core, unless the work is low-precision (oneDNN's
// bf16 GEMMs run on the OpenMP pool). --threads N sets both pools to N; OMP_NUM_THREADS keeps
// LibTorch's count as it reads it, and no longer shrinks a pthread OpenBLAS's pool (OpenBLAS falls
// back to it when OPENBLAS_NUM_THREADS is unset).
ThreadPlan plan_threads(const ThreadEnvironment& env);

// Reads this machine and process (physical cores, the BLAS, the environment), applies plan_threads
// (at::set_num_threads, openblas_set_num_threads) and returns the plan. Throws ConfigError when
// requested > kMaxThreads (100,000 OpenMP threads hang the process).
inline constexpr int kMaxThreads = 1024;
ThreadPlan configure_threads(int requested = 0, bool low_precision = false);

// configure_threads(threads).intra_op.
int set_num_threads(int threads = 0);

// Physical cores (distinct package / core id pairs) among the CPUs this process may run on;
// std::thread::hardware_concurrency() where the topology is not readable. Capped by the CPU quota
// of the process's cgroup (a container started with --cpus=2 on a 64-core host gets 2), which the
// affinity mask does not show.
int physical_cores();

// The CPUs a CFS quota allows: ceil(quota / period); 0 when there is no quota (quota < 0, as
// cgroup v1's cpu.cfs_quota_us = -1 or v2's cpu.max "max") or the values make no sense.
int cpu_quota_cpus(long long quota_us, long long period_us);

// The threading of the BLAS mapped into this process.
BlasThreading blas_threading();

// The BLAS / LAPACK shared libraries mapped into this process (e.g.
// ".../openblas-pthread/libblas.so.3"), comma separated, resolved through symlinks; "unknown" if
// none can be found.
std::string blas_libraries();

// glibc's malloc serves blocks of 32 MiB and more (its dynamic mmap threshold's ceiling) by mmap
// and unmaps them on free, so every training step pays page faults and the kernel's zeroing for its
// large tensors again (the logits of a 151,936-token vocabulary: 14% of a Qwen2-0.5B step, issue
// 17). This keeps freed memory in malloc's heap for reuse instead (M_MMAP_MAX = 0,
// M_TRIM_THRESHOLD at its maximum): for a process whose allocation sizes repeat, as training's do;
// peak RSS can grow by the heap's fragmentation. Process-wide, so the caller decides (`peft train`
// does). Returns false where the C library is not glibc (nothing done).
bool keep_freed_memory_for_reuse();

// bfloat16 mixed precision for the scope of the guard, as transformers'
// TrainingArguments(bf16=True): LibTorch's CPU autocast runs the matrix products (linear, matmul,
// bmm, baddbmm, addmm) in bfloat16 while the parameters stay float32 (the adapter's master weights,
// its gradients and the optimizer state). enabled = false does nothing. Restores the previous
// autocast state on exit.
class Bf16Autocast {
 public:
  explicit Bf16Autocast(bool enabled = true);
  ~Bf16Autocast();
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  bool enabled_ = false;
  bool previous_ = false;
  int previous_dtype_ = 0;
};

}  // namespace peft
