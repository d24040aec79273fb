// The GEMMs of a LoRA training step on issue 17's workload (1024 tokens; hidden 512, intermediate
// 1376, vocab 4096), in float32 (OpenBLAS) and in bfloat16 (LibTorch's CPU path: oneDNN where the
// CPU has AVX512-BF16), plus the CPU autocast that would carry bf16 through a model
// (LibTorch 1.13's at::autocast CPU mode). Decides whether bf16 pays on a machine.
//   build/bench/gemm_dtype_bench
#include <ATen/autocast_mode.h>
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "bench_util.h"

namespace {

// (M, K, N): x (M, K) times W^T (K, N).
const int64_t kShapes[][3] = {
    {1024, 512, 1376},  // gate / up projection
    {1024, 1376, 512},  // down projection
    {1024, 512, 512},   // q / o projection
    {1024, 512, 4096},  // lm_head
};

void BM_Mm(benchmark::State& state) {
  const auto* s = kShapes[state.range(0)];
  const auto dtype = state.range(1) ? torch::kBFloat16 : torch::kFloat;
  torch::manual_seed(0);
  const at::Tensor a = torch::randn({s[0], s[1]}).to(dtype);
  const at::Tensor b = torch::randn({s[2], s[1]}).to(dtype);
  for (auto _ : state) benchmark::DoNotOptimize(at::mm(a, b.t()));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(s[0] * s[1] * s[2]),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(dtype == torch::kFloat ? "float32" : "bfloat16") + " " +
                 std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]));
}

BENCHMARK(BM_Mm)
    ->ArgsProduct({{0, 1, 2, 3}, {0, 1}})
    ->ArgNames({"shape", "bf16"})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  peft::bench::print_runtime_header();
  std::printf("bf16 via oneDNN: %s\n", at::hasMKLDNN() ? "available" : "not built");
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
