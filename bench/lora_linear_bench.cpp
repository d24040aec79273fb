// LoRA Linear forward (inference, no grad) at d = 1024 / 4096 and r = 8 / 16 / 64 on a batch of
// 2048 tokens: plain LibTorch torch::nn::Linear (the baseline, same process), peft::nn::Linear
// without adapters, with an unmerged adapter, and with the adapter merged. Prints the ratios to the
// baseline at the end.
//   build-release/bench/lora_linear_bench [--benchmark_filter=...] [--tokens=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_util.h"
#include "peft/lora/linear.h"

namespace {

int64_t g_tokens = 2048;

enum Variant : int64_t { kPlainTorch = 0, kBase = 1, kUnmerged = 2, kMerged = 3 };

void BM_LinearForward(benchmark::State& state) {
  const int64_t d = state.range(0);
  const int r = static_cast<int>(state.range(1));
  const auto variant = static_cast<Variant>(state.range(2));
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  auto x = torch::randn({g_tokens, d});
  torch::nn::Linear plain(torch::nn::LinearOptions(d, d));
  peft::nn::Linear layer(d, d);
  if (variant == kUnmerged || variant == kMerged) {
    peft::nn::AdapterSettings s;
    s.r = r;
    s.lora_alpha = 2.0 * r;
    s.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;  // non-zero B: real work
    layer->update_layer("default", s);
    if (variant == kMerged) layer->merge();
  }
  for (auto _ : state) {
    torch::Tensor y = variant == kPlainTorch ? plain->forward(x) : layer->forward(x);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * g_tokens);
  state.counters["flops"] = benchmark::Counter(
      static_cast<double>(2 * g_tokens * d * d) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t d : {1024, 4096}) {
    b->Args({d, 0, kPlainTorch});
    b->Args({d, 0, kBase});
    for (int64_t r : {8, 16, 64}) {
      b->Args({d, r, kUnmerged});
      b->Args({d, r, kMerged});
    }
  }
  b->ArgNames({"d", "r", "variant"})->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
}
BENCHMARK(BM_LinearForward)->Apply(Args);

// Prints the ratios of every variant to the plain LibTorch baseline.
class RatioReporter : public peft::bench::TimesReporter {
 public:
  void Finalize() override {
    TimesReporter::Finalize();
    std::printf("\nratios to plain LibTorch Linear (same process, %lld tokens):\n",
                static_cast<long long>(g_tokens));
    std::printf("%6s %4s %10s %10s %10s\n", "d", "r", "base", "unmerged", "merged");
    for (int64_t d : {1024, 4096}) {
      auto t = [&](int64_t r, int v) {
        return time("BM_LinearForward/d:" + std::to_string(d) + "/r:" + std::to_string(r) +
                    "/variant:" + std::to_string(v));
      };
      const double plain = t(0, kPlainTorch);
      if (plain <= 0) continue;
      for (int64_t r : {8, 16, 64}) {
        auto ratio = [&](double v) {
          return v > 0 ? std::to_string(v / plain).substr(0, 5) : std::string("n/a");
        };
        std::printf("%6lld %4lld %10s %10s %10s\n", static_cast<long long>(d),
                    static_cast<long long>(r), ratio(t(0, kBase)).c_str(),
                    ratio(t(r, kUnmerged)).c_str(), ratio(t(r, kMerged)).c_str());
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  RatioReporter reporter;
  return peft::bench::run_benchmarks(argc, argv, "tokens", g_tokens, reporter);
}
