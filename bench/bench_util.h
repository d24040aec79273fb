// Shared pieces of the benchmarks: a console reporter that keeps each benchmark's time for a ratio table, and
// the runtime header (threads, BLAS) every benchmark prints first.
#pragma once

#include <benchmark/benchmark.h>
#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "peft/runtime.h"

namespace peft::bench {

// Keeps the real time of every run under "function/args" (e.g. "BM_Prefill/variant:1"): the median with
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

// Uses every core and prints the thread count and the BLAS library LibTorch runs on.
inline void print_runtime_header() {
  const int threads = peft::set_num_threads();
  (void)at::mm(at::randn({64, 64}), at::randn({64, 64}));  // load BLAS before reporting it
  std::printf("threads: %d\nBLAS: %s\n", threads, peft::blas_libraries().c_str());
}

// The shared main(): reads "--NAME=<int>" into `value` (the benchmark's own size flag), prints the runtime
// header and runs the benchmarks with `reporter`.
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
