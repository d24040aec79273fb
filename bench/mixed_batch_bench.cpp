// Many adapters in one batch: a forward of 32 rows (each `--seq` tokens, default 1 = one decoding step) through a
// Llama-shaped model (hidden 1024, intermediate 2816, 2 layers, GQA 16/8 heads, vocab 1024, float32) with LoRA
// r=16 on all seven projections, the rows spread evenly over 1, 4, 8 or 32 distinct adapters. Kernels: the
// gathered kernel (rows grouped by adapter, one bmm for A and one for B), PEFT's sub-batch loop, and as baselines
// one adapter active for every row (the plain path) and the base model. Goal: 8 adapters <= 1.15x one adapter.
//   build-release/bench/mixed_batch_bench [--seq=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "bench_util.h"
#include "peft/lora/mixed_batch.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace {

int64_t g_seq = 1;
constexpr int64_t kRows = 32;
constexpr int kMaxAdapters = 32;

enum Kernel : int64_t { kGathered = 0, kLoop = 1, kOneAdapter = 2, kBase = 3 };
const char* kKernelNames[] = {"gathered", "sub-batch loop", "one adapter", "base model"};

struct Model {
  std::shared_ptr<peft::models::PretrainedModel> model;
  std::shared_ptr<peft::PeftModel> peft;
};

Model& model() {
  static Model m = [] {
    Model out;
    torch::manual_seed(0);
    out.model = peft::models::from_config(
        R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
            "intermediate_size": 2816, "num_hidden_layers": 2, "num_attention_heads": 16,
            "num_key_value_heads": 8, "vocab_size": 1024, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false})");
    out.model->eval();
    for (auto& p : out.model->parameters()) p.set_requires_grad(false);
    peft::LoraConfig c;
    c.r = 16;
    c.lora_alpha = 32;
    c.target_modules = std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"};
    c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;  // B != 0: real work
    out.peft = peft::get_peft_model(out.model, c, "a0");
    for (int i = 1; i < kMaxAdapters; ++i) out.peft->add_adapter("a" + std::to_string(i), c);
    out.peft->set_adapter("a0");
    out.model->eval();
    return out;
  }();
  return m;
}

void BM_MixedBatch(benchmark::State& state) {
  const auto kernel = static_cast<Kernel>(state.range(0));
  const int64_t distinct = state.range(1);
  Model& m = model();
  const at::Tensor ids = torch::randint(0, 1024, {kRows, g_seq});
  std::vector<std::string> names;
  for (int64_t i = 0; i < kRows; ++i) names.push_back("a" + std::to_string(i % distinct));
  torch::NoGradGuard no_grad;
  auto run = [&] {
    if (kernel == kBase) {
      auto off = m.peft->disable_adapter();
      return m.model->forward({ids});
    }
    if (kernel == kOneAdapter) return m.model->forward({ids});
    peft::nn::MixedBatchGuard guard(*m.model, names,
                                    kernel == kLoop ? peft::nn::MixedBatchKernel::kLoop
                                                    : peft::nn::MixedBatchKernel::kGathered);
    return m.model->forward({ids});
  };
  // The first call of an adapter set builds the gathered kernel's stacked factors (cached per layer): timed
  // apart as "first_ms", then the steady state is measured.
  const auto t0 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(run());
  state.counters["first_ms"] =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (auto _ : state) benchmark::DoNotOptimize(run());
  state.SetItemsProcessed(state.iterations() * kRows * g_seq);
  state.SetLabel(std::string(kKernelNames[kernel]) + ", " + std::to_string(distinct) + " adapter(s)");
}
BENCHMARK(BM_MixedBatch)
    ->Args({kBase, 1})
    ->Args({kOneAdapter, 1})
    ->ArgsProduct({{kGathered, kLoop}, {1, 4, 8, 32}})
    ->ArgNames({"kernel", "adapters"})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();

class MixedReporter : public peft::bench::TimesReporter {
 public:
  void Finalize() override {
    TimesReporter::Finalize();
    auto key = [](int64_t kernel, int64_t n) {
      return "BM_MixedBatch/kernel:" + std::to_string(kernel) + "/adapters:" + std::to_string(n);
    };
    const double one = time(key(kOneAdapter, 1)), base = time(key(kBase, 1));
    std::printf("\n%lld rows x %lld tokens; time / one adapter for every row (one adapter / base model = %.3f):\n",
                static_cast<long long>(kRows), static_cast<long long>(g_seq), base > 0 ? one / base : -1.0);
    std::printf("  %-9s %10s %16s\n", "adapters", "gathered", "sub-batch loop");
    for (int64_t n : {1, 4, 8, 32}) {
      const double g = time(key(kGathered, n)), l = time(key(kLoop, n));
      std::printf("  %-9lld %10.3f %16.3f\n", static_cast<long long>(n), g > 0 && one > 0 ? g / one : -1.0,
                  l > 0 && one > 0 ? l / one : -1.0);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  MixedReporter reporter;
  return peft::bench::run_benchmarks(argc, argv, "seq", g_seq, reporter);
}
