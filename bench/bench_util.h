// Shared pieces of the benchmarks: a console reporter that keeps each benchmark's time for a ratio
// table, and the runtime header (threads, BLAS) every benchmark prints first.
#pragma once

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "peft/runtime.h"

namespace peft::bench {

// Keeps the real time of every run under "function/args" (e.g. "BM_Prefill/variant:1"): the median
// with
// --benchmark_repetitions, the single run otherwise. Subclasses print their ratios in Finalize().
class TimesReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      const std::string key = run.run_name.function_name + "/" + run.run_name.args;
      if (run.run_type == Run::RT_Iteration && medians_.count(key)) continue;
      if (run.run_type == Run::RT_Aggregate) medians_.insert(key);
      times_[key] = run.GetAdjustedRealTime();
    }
  }
  // Time of `key`, or -1 when it did not run (filtered out).
  double time(const std::string& key) const {
    auto it = times_.find(key);
    return it == times_.end() ? -1.0 : it->second;
  }

 private:
  std::map<std::string, double> times_;
  std::set<std::string> medians_;
};

// Milliseconds since t0.
inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The median of interleaved rounds' times (the upper one of an even count); -1 when there are none.
inline double median(std::vector<double> v) {
  if (v.empty()) return -1.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A field of /proc/self/status in kB ("VmRSS", "VmHWM"), or -1 when absent.
inline long read_status_kb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) return std::stol(line.substr(key.size()));
  }
  return -1;
}

inline const char* blas_threading_name(peft::BlasThreading t) {
  switch (t) {
    case peft::BlasThreading::kSequential:
      return "sequential";
    case peft::BlasThreading::kPthreads:
      return "pthreads";
    case peft::BlasThreading::kOpenMP:
      return "OpenMP";
    default:
      return "unknown";
  }
}

// Set by a benchmark that runs bf16 work (the thread plan gives oneDNN's GEMMs the OpenMP pool).
inline bool g_low_precision = false;

// Applies peft's thread plan (requested = 0: its automatic choice; n > 0: LibTorch's and
// OpenBLAS's pools both n, for single-threaded figures) and prints the counts, why, and the BLAS
// LibTorch runs on.
inline void print_runtime_header(int requested = 0) {
  const peft::ThreadPlan plan = peft::configure_threads(requested, g_low_precision);
  const std::string blas_pool = plan.blas > 0 ? std::to_string(plan.blas) : "as set";
  std::printf("threads: %d (OpenBLAS pool: %s; %s)\nBLAS: %s (%s threading)\n", plan.intra_op,
              blas_pool.c_str(), plan.reason.c_str(), peft::blas_libraries().c_str(),
              blas_threading_name(peft::blas_threading()));
}

// Reads "--NAME=<int>" arguments into the given variables (the other arguments are left for Google
// Benchmark).
inline void read_int_flags(int argc, char** argv,
                           std::initializer_list<std::pair<const char*, int64_t*>> flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    for (const auto& [name, value] : flags) {
      const std::string f = std::string("--") + name + "=";
      if (a.rfind(f, 0) == 0) *value = std::stoll(a.substr(f.size()));
    }
  }
}

// The shared main(): reads "--NAME=<int>" into `value` (the benchmark's own size flag), prints the
// runtime header and runs the benchmarks with `reporter`.
inline int run_benchmarks(int argc, char** argv, const std::string& name, int64_t& value,
                          benchmark::BenchmarkReporter& reporter) {
  const std::string flag = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind(flag, 0) == 0) value = std::stoll(a.substr(flag.size()));
  }
  print_runtime_header();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace peft::bench
