// Prefill and per-token decode of a Llama-shaped model (hidden 1024, 8 layers, GQA 16/8 heads,
// vocab 32000, random weights): base model, LoRA r=16 unmerged on every linear layer (all-linear),
// and merged. Prints the ratios to the base model at the end, and unmerged / merged from prefills
// run interleaved (the figure to compare on a noisy machine).
//   build-release/bench/llama_decode_bench [--prompt=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "bench_util.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace {

int64_t g_prompt = 128;

enum Variant : int64_t { kBase = 0, kUnmerged = 1, kMerged = 2 };
const char* kNames[] = {"base", "lora-unmerged", "lora-merged"};

std::shared_ptr<peft::models::PretrainedModel> make_model(Variant v) {
  torch::manual_seed(0);
  auto model = peft::models::from_config(R"({
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "intermediate_size": 2816,
    "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false})");
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  if (v != kBase) {
    peft::LoraConfig c;
    c.r = 16;
    c.lora_alpha = 32;
    c.target_modules = std::string("all-linear");
    c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;  // non-zero B: real work
    auto pm = peft::get_peft_model(model, c);
    if (v == kMerged) pm->merge_adapter();
    static std::vector<std::shared_ptr<peft::PeftModel>>
        keep;  // the adapters live as long as the model
    keep.push_back(pm);
  }
  return model;
}

std::shared_ptr<peft::models::PretrainedModel> model_for(Variant v) {
  static std::map<int64_t, std::shared_ptr<peft::models::PretrainedModel>> cache;
  auto& m = cache[v];
  if (!m) m = make_model(v);
  return m;
}

void BM_Prefill(benchmark::State& state) {
  auto model = model_for(static_cast<Variant>(state.range(0)));
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(0, 32000, {1, g_prompt});
  for (auto _ : state) {
    peft::models::KVCache cache;
    peft::models::ForwardInput in;
    in.input_ids = ids;
    in.cache = &cache;
    benchmark::DoNotOptimize(model->forward(in).data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * g_prompt);
  state.SetLabel(kNames[state.range(0)]);
}

void BM_DecodeToken(benchmark::State& state) {
  auto model = model_for(static_cast<Variant>(state.range(0)));
  torch::NoGradGuard no_grad;
  peft::models::KVCache prompt_cache;
  peft::models::ForwardInput in;
  in.input_ids = torch::randint(0, 32000, {1, g_prompt});
  in.cache = &prompt_cache;
  model->forward(in);
  auto token = torch::randint(0, 32000, {1, 1});
  for (auto _ : state) {
    state.PauseTiming();
    peft::models::KVCache cache =
        prompt_cache;  // decode one token after the same prompt every time
    state.ResumeTiming();
    peft::models::ForwardInput step;
    step.input_ids = token;
    step.cache = &cache;
    benchmark::DoNotOptimize(model->forward(step).data_ptr());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(kNames[state.range(0)]);
}

// The three variants' prefills interleaved in a shuffled order every iteration, so that the drift
// of a shared machine's speed stays out of the ratios; median of each.
std::map<int64_t, double> g_interleaved_ms;
void BM_PrefillInterleaved(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(0, 32000, {1, g_prompt});
  std::vector<int64_t> order = {kBase, kUnmerged, kMerged};
  std::map<int64_t, std::vector<double>> times;
  std::mt19937 rng(0);
  for (auto _ : state) {
    std::shuffle(order.begin(), order.end(), rng);
    for (const int64_t v : order) {
      auto model = model_for(static_cast<Variant>(v));
      peft::models::KVCache cache;
      peft::models::ForwardInput in;
      in.input_ids = ids;
      in.cache = &cache;
      const auto t0 = std::chrono::steady_clock::now();
      benchmark::DoNotOptimize(model->forward(in).data_ptr());
      times[v].push_back(peft::bench::ms_since(t0));
    }
  }
  for (auto& [v, t] : times) g_interleaved_ms[v] = peft::bench::median(t);
}
BENCHMARK(BM_PrefillInterleaved)->Iterations(20)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK(BM_Prefill)
    ->DenseRange(0, 2)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK(BM_DecodeToken)
    ->DenseRange(0, 2)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

// Prints the ratios of the LoRA variants to the base model.
class RatioReporter : public peft::bench::TimesReporter {
 public:
  void Finalize() override {
    TimesReporter::Finalize();
    std::printf("\nratios to the base model (prompt %lld tokens, batch 1):\n",
                static_cast<long long>(g_prompt));
    for (const char* fn : {"BM_Prefill", "BM_DecodeToken"}) {
      const double base = time(std::string(fn) + "/variant:0");
      if (base <= 0) continue;
      std::printf("  %-15s unmerged %.3f   merged %.3f\n", fn,
                  time(std::string(fn) + "/variant:1") / base,
                  time(std::string(fn) + "/variant:2") / base);
    }
    if (g_interleaved_ms.count(kMerged) && g_interleaved_ms[kMerged] > 0) {
      std::printf(
          "  prefill, 20 interleaved rounds (medians): base %.1f ms, unmerged %.1f ms, merged "
          "%.1f ms; unmerged / merged %.3f\n",
          g_interleaved_ms[kBase], g_interleaved_ms[kUnmerged], g_interleaved_ms[kMerged],
          g_interleaved_ms[kUnmerged] / g_interleaved_ms[kMerged]);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  RatioReporter reporter;
  return peft::bench::run_benchmarks(argc, argv, "prompt", g_prompt, reporter);
}
