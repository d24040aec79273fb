// Many adapters in one batch: a forward of 32 rows (each `--seq` tokens, default 1 = one decoding
// step) through a Llama-shaped model (hidden 1024, intermediate 2816, 2 layers, GQA 16/8 heads,
// vocab 1024, float32) with LoRA r=16 on all seven projections, the rows spread evenly over 1, 4, 8
// or 32 distinct adapters. Kernels: the gathered kernel (rows grouped by adapter, one bmm for A and
// one for B), PEFT's sub-batch loop, and as baselines one adapter active for every row (the plain
// path) and the base model (every row "__base__"). Goal: 8 adapters
// <= 1.15x one adapter.
//   build-release/bench/mixed_batch_bench [--seq=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "peft/lora/mixed_batch.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace {

int64_t g_seq = 1;
constexpr int64_t kRows = 32;
constexpr int kMaxAdapters = 32;

enum Kernel : int64_t { kGathered = 0, kLoop = 1, kOneAdapter = 2, kBase = 3 };
const char* kKernelNames[] = {"gathered", "sub-batch loop", "one adapter",
                              "base model (every row __base__)"};

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
    c.target_modules = std::vector<std::string>{"q_proj",    "k_proj",  "v_proj",   "o_proj",
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

struct Variant {
  Kernel kernel;
  int64_t adapters;
  std::string name() const {
    return std::string(kKernelNames[kernel]) + ", " + std::to_string(adapters);
  }
};

std::vector<Variant> variants() {
  std::vector<Variant> out = {{kBase, 1}, {kOneAdapter, 1}};
  for (int64_t n : {1, 4, 8, 32}) {
    out.push_back({kGathered, n});
    out.push_back({kLoop, n});
  }
  return out;
}

at::Tensor forward(const Variant& v, const at::Tensor& ids) {
  Model& m = model();
  if (v.kernel == kOneAdapter) return m.model->forward({ids});
  std::vector<std::string> names;
  for (int64_t i = 0; i < kRows; ++i) {
    names.push_back(v.kernel == kBase ? "__base__" : "a" + std::to_string(i % v.adapters));
  }
  peft::nn::MixedBatchGuard guard(*m.model, names,
                                  v.kernel == kLoop ? peft::nn::MixedBatchKernel::kLoop
                                                    : peft::nn::MixedBatchKernel::kGathered);
  return m.model->forward({ids});
}

std::map<std::string, double> g_median_ms;  // variant name -> median forward time
std::map<std::string, double> g_first_ms;   // variant name -> first (cold) call

// Every iteration runs every variant once, in a shuffled order: this machine's speed drifts over
// seconds, and interleaving keeps that drift out of the ratios. Reports the median time of each
// variant.
void BM_MixedBatchInterleaved(benchmark::State& state) {
  const at::Tensor ids = torch::randint(0, 1024, {kRows, g_seq}, torch::kLong);
  const auto all = variants();
  torch::NoGradGuard no_grad;
  for (const auto& v :
       all) {  // cold calls: the gathered kernel builds its stacked factors once per adapter set
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(forward(v, ids));
    g_first_ms[v.name()] =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  std::map<std::string, std::vector<double>> times;
  std::mt19937 rng(0);
  std::vector<size_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (auto _ : state) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) {
      const auto t0 = std::chrono::steady_clock::now();
      benchmark::DoNotOptimize(forward(all[i], ids));
      times[all[i].name()].push_back(peft::bench::ms_since(t0));
    }
  }
  for (auto& [name, t] : times) g_median_ms[name] = peft::bench::median(t);
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(all.size()) * kRows * g_seq);
}
BENCHMARK(BM_MixedBatchInterleaved)->Iterations(15)->Unit(benchmark::kMillisecond)->UseRealTime();

class MixedReporter : public peft::bench::TimesReporter {
 public:
  void Finalize() override {
    TimesReporter::Finalize();
    auto median = [](const Variant& v) {
      auto it = g_median_ms.find(v.name());
      return it == g_median_ms.end() ? -1.0 : it->second;
    };
    const double one = median({kOneAdapter, 1}), base = median({kBase, 1});
    std::printf("\n%lld rows x %lld tokens, median of 15 interleaved rounds (ms):\n",
                static_cast<long long>(kRows), static_cast<long long>(g_seq));
    std::printf(
        "  base model (every row __base__) %.1f, one adapter for every row %.1f (%.3fx base)\n",
        base, one, one / base);
    std::printf("  %-9s %14s %10s %16s %10s %16s\n", "adapters", "gathered (ms)", "/ one",
                "sub-batch loop", "/ one", "gathered 1st call");
    for (int64_t n : {1, 4, 8, 32}) {
      const double g = median({kGathered, n}), l = median({kLoop, n});
      std::printf("  %-9lld %14.1f %10.3f %16.1f %10.3f %16.1f\n", static_cast<long long>(n), g,
                  g / one, l, l / one, g_first_ms[Variant{kGathered, n}.name()]);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  MixedReporter reporter;
  return peft::bench::run_benchmarks(argc, argv, "seq", g_seq, reporter);
}
