// One training step (forward + causal-LM loss + backward + AdamW update) of a Llama-shaped model
// (issue 17's workload: hidden 512, intermediate 1376, 4 layers, GQA 8/4 heads, vocab 4096, random
// weights), batch 4 x 256 tokens: full fine-tuning, LoRA r=16 on q_proj/v_proj, LoRA r=16 on all
// linear layers, and DoRA (use_dora) on the same two target sets, and VeLoRA (velora_config, PEFT's
// defaults: 64 groups, batch_average) on them too, timed in the same process; plus the inference
// forward (no grad, eval) of the LoRA, DoRA and VeLoRA variants. Peak memory of each variant is
// measured in a child process (the VmHWM of a fresh process that builds the model and runs 3
// steps), because a process's high-water mark only grows. --model=qwen2-0.5b runs the realistic
// size instead (a random Qwen2-0.5B-shaped model: 494 M parameters, vocab 151,936, 24 layers; batch
// 1 x 256; LoRA variants only).
//   build-release/bench/train_step_bench [--seq=N] [--model=qwen2-0.5b] [--bf16
//   [--bf16-float-weights]] [--bf16-base] [--malloc-default]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "bench_util.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"
#include "peft/train/frozen_bf16.h"
#include "peft/train/optimizer.h"
#include "workloads.h"

namespace {

int64_t g_seq = 256;
int64_t kBatch = 4;
bool g_qwen = false;  // --model=qwen2-0.5b
bool g_bf16 = false;  // --bf16: bfloat16 autocast (transformers' bf16=True)
bool g_bf16_base =
    false;  // --bf16-base: the frozen base model loaded in bfloat16 (--dtype bfloat16)
// With --bf16, the frozen Linear weights held in bfloat16 as `peft train --bf16` does
// (peft/train/frozen_bf16.h); --bf16-float-weights keeps them float32 (autocast casts each step).
bool g_bf16_frozen = true;
// Freed memory kept for reuse as `peft train` does (peft::keep_freed_memory_for_reuse);
// --malloc-default leaves glibc's malloc as it is.
bool g_keep_memory = true;

enum Variant : int64_t {
  kFull = 0,
  kLoraQv = 1,
  kLoraAllLinear = 2,
  kDoraQv = 3,
  kDoraAllLinear = 4,
  kVeloraQv = 5,
  kVeloraAllLinear = 6
};
constexpr int64_t kVariants = 7;
const char* kNames[] = {"full-finetune",   "lora-qv",   "lora-all-linear",  "dora-qv",
                        "dora-all-linear", "velora-qv", "velora-all-linear"};

struct Setup {
  std::shared_ptr<peft::models::PretrainedModel> model;
  std::shared_ptr<peft::PeftModel> peft;
  std::unique_ptr<peft::train::Optimizer> optimizer;
  at::Tensor ids;
};

Setup make(Variant v) {
  torch::manual_seed(0);
  Setup s;
  s.model =
      peft::models::from_config(g_qwen ? peft::bench::kQwen05BConfig : peft::bench::kLlamaConfig);
  s.model->train();
  if (g_bf16_base) s.model->to(at::kBFloat16);
  if (v != kFull) {
    peft::LoraConfig c = peft::bench::workload_lora_config(
        /*all_linear=*/!(v == kLoraQv || v == kDoraQv || v == kVeloraQv));
    c.use_dora = v == kDoraQv || v == kDoraAllLinear;
    if (v == kVeloraQv || v == kVeloraAllLinear) c.velora_config = peft::VeloraConfig{};
    s.peft = peft::get_peft_model(s.model, c);
    if (g_bf16 && g_bf16_frozen) peft::train::store_frozen_linear_weights_in_bf16(*s.model);
  }
  s.optimizer = peft::train::create_adamw_optimizer(*s.model, {.lr = 1e-4, .weight_decay = 0.0});
  s.ids = torch::randint(0, g_qwen ? 151936 : 4096, {kBatch, g_seq});
  return s;
}

void train_step(Setup& s) {
  peft::bench::workload_train_step(*s.model, *s.optimizer, s.ids, g_bf16);
}

void BM_TrainStep(benchmark::State& state) {
  if (g_qwen && (state.range(0) == kFull || state.range(0) >= kDoraQv)) {
    state.SkipWithError("the 0.5B workload runs the LoRA variants only");
    for (auto _ : state) {
    }
    return;
  }
  static std::map<int64_t, Setup> cache;  // built once per variant, outside the timing
  auto& s = cache[state.range(0)];
  if (!s.model) s = make(static_cast<Variant>(state.range(0)));
  train_step(s);  // warm-up: optimizer state allocated
  for (auto _ : state) train_step(s);
  state.SetItemsProcessed(state.iterations() * kBatch * g_seq);
  state.SetLabel(kNames[state.range(0)]);
  s = Setup();  // free this variant's memory before the next
}

BENCHMARK(BM_TrainStep)
    ->DenseRange(0, kVariants - 1)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0)
    ->UseRealTime();

// Inference: one eval-mode forward without autograd (prefill of the same batch).
void BM_Forward(benchmark::State& state) {
  Setup s = make(static_cast<Variant>(state.range(0)));
  s.model->eval();
  torch::NoGradGuard no_grad;
  peft::models::ForwardInput in;
  in.input_ids = s.ids;
  (void)s.model->forward(in);
  for (auto _ : state) benchmark::DoNotOptimize(s.model->forward(in));
  state.SetLabel(kNames[state.range(0)]);
}

BENCHMARK(BM_Forward)
    ->DenseRange(1, kVariants - 1)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

// Child mode: build the variant, run 3 steps, print "<VmHWM kB> <VmRSS kB after building>".
int peak_memory_child(Variant v) {
  peft::configure_threads(0, g_bf16);
  Setup s = make(v);
  const long built = peft::bench::read_status_kb("VmRSS");
  for (int i = 0; i < 3; ++i) train_step(s);
  std::printf("%ld %ld\n", peft::bench::read_status_kb("VmHWM"), built);
  return 0;
}

// --step-times-variant=V [--steps=N]: build the variant, run 2 warm-up steps then N timed ones
// (default 10), print each step's time and the median and minimum (the minimum is the figure least
// disturbed by other load on a shared machine).
int step_times(Variant v, int64_t steps) {
  peft::bench::print_runtime_header();
  Setup s = make(v);
  for (int i = 0; i < 2; ++i) train_step(s);
  std::vector<double> ms;
  for (int64_t i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    train_step(s);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    std::printf("step %lld: %.1f ms\n", static_cast<long long>(i + 1), ms.back());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%s%s%s%s%s: median %.1f ms, min %.1f ms over %lld steps; peak RSS %.1f MiB\n",
              kNames[v], g_bf16 ? " (bf16)" : "",
              g_bf16 && !g_bf16_frozen ? " (float32 frozen weights)" : "",
              g_keep_memory ? "" : " (malloc default)", g_bf16_base ? " (bf16 base)" : "",
              ms[ms.size() / 2], ms.front(), static_cast<long long>(steps),
              static_cast<double>(peft::bench::read_status_kb("VmHWM")) / 1024.0);
  return 0;
}

class TrainReporter : public peft::bench::TimesReporter {
 public:
  explicit TrainReporter(std::string self) : self_(std::move(self)) {}
  void Finalize() override {
    TimesReporter::Finalize();
    std::printf(
        "\none step, batch %lld x %lld tokens (times in the same process; peak RSS in a child "
        "each):\n",
        static_cast<long long>(kBatch), static_cast<long long>(g_seq));
    const double full = time("BM_TrainStep/variant:0");
    for (int64_t v = 0; v < kVariants; ++v) {
      const double t = time("BM_TrainStep/variant:" + std::to_string(v));
      if (t <= 0) continue;
      long hwm = -1, built = -1;
      const std::string cmd = self_ + " --peak-memory-variant=" + std::to_string(v) +
                              " --seq=" + std::to_string(g_seq) +
                              (g_qwen ? " --model=qwen2-0.5b" : "") + (g_bf16 ? " --bf16" : "") +
                              (g_bf16_base ? " --bf16-base" : "") +
                              (g_bf16_frozen ? "" : " --bf16-float-weights") +
                              (g_keep_memory ? "" : " --malloc-default");
      if (FILE* p = popen(cmd.c_str(), "r")) {
        if (std::fscanf(p, "%ld %ld", &hwm, &built) != 2) hwm = built = -1;
        pclose(p);
      }
      peak_[v] = hwm;
      std::printf(
          "  %-16s %8.1f ms  %9.0f tokens/s  time/full %.3f  peak RSS %7.1f MiB (model built: %.1f "
          "MiB)\n",
          kNames[v], t, static_cast<double>(kBatch * g_seq) / (t / 1e3), full > 0 ? t / full : 0.0,
          static_cast<double>(hwm) / 1024.0, static_cast<double>(built) / 1024.0);
    }
    std::printf("\nDoRA and VeLoRA against LoRA on the same targets (VeLoRA: peak RSS saved):\n");
    for (int64_t v : {kDoraQv, kDoraAllLinear, kVeloraQv, kVeloraAllLinear}) {
      const int64_t lora = (v == kDoraQv || v == kVeloraQv) ? kLoraQv : kLoraAllLinear;
      const double td = time("BM_TrainStep/variant:" + std::to_string(v));
      const double tl = time("BM_TrainStep/variant:" + std::to_string(lora));
      const double fd = time("BM_Forward/variant:" + std::to_string(v));
      const double fl = time("BM_Forward/variant:" + std::to_string(lora));
      if (td <= 0 || tl <= 0) continue;  // not run (--benchmark_filter)
      std::printf("  %-17s train step %+.1f%%", kNames[v], 100.0 * (td / tl - 1.0));
      if (fd > 0 && fl > 0) std::printf("  inference forward %+.1f%%", 100.0 * (fd / fl - 1.0));
      if (peak_.count(v) && peak_.count(lora) && peak_[v] > 0 && peak_[lora] > 0) {
        std::printf("  peak RSS %+.1f MiB", static_cast<double>(peak_[v] - peak_[lora]) / 1024.0);
      }
      std::printf("\n");
    }
  }

 private:
  std::string self_;
  std::map<int64_t, long> peak_;  // VmHWM (kB) of each variant's child
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--seq=", 0) == 0) g_seq = std::stoll(a.substr(6));
    if (a == "--bf16") g_bf16 = peft::bench::g_low_precision = true;
    if (a == "--bf16-float-weights") g_bf16_frozen = false;
    if (a == "--malloc-default") g_keep_memory = false;
    if (a == "--bf16-base") g_bf16_base = peft::bench::g_low_precision = true;
    if (a == "--model=qwen2-0.5b") {
      g_qwen = true;
      kBatch = 1;
    }
  }
  if (g_keep_memory) peft::keep_freed_memory_for_reuse();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--step-times-variant=", 0) == 0) {
      int64_t steps = 10;
      for (int j = 1; j < argc; ++j) {
        const std::string b = argv[j];
        if (b.rfind("--steps=", 0) == 0) steps = std::max<int64_t>(1, std::stoll(b.substr(8)));
      }
      return step_times(static_cast<Variant>(std::stoll(a.substr(21))), steps);
    }
    if (a.rfind("--peak-memory-variant=", 0) == 0)
      return peak_memory_child(static_cast<Variant>(std::stoll(a.substr(22))));
  }
  TrainReporter reporter(argv[0]);
  return peft::bench::run_benchmarks(argc, argv, "seq", g_seq, reporter);
}
