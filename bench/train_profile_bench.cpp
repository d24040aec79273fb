// Where a LoRA training step's time goes: issue 17's workload (random Llama, vocab 4096, hidden
// 512, intermediate 1376, 4 layers, 8 / 4 heads; LoRA r=16 alpha=32; AdamW; batch 4 x 256) run
// under LibTorch's profiler for a few steps after two warm-up steps. Prints the self time of every
// operator (forward ops and the autograd nodes of the backward), largest first, and the wall time
// per step with and without the profiler.
// --model=qwen2-0.5b profiles the realistic size (batch 1). --bf16 holds the frozen Linear weights
// in bfloat16 as `peft train --bf16` does, unless --bf16-float-weights.
//   build/bench/train_profile_bench [--targets=qv|all-linear] [--steps=N] [--seq=N] [--shapes]
//   [--bf16 [--bf16-float-weights]] [--model=qwen2-0.5b]
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
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

namespace prof = torch::autograd::profiler;

struct Aggregate {
  double self_us = 0;
  int64_t calls = 0;
};

// Self time per operator name: inclusive time minus the time of the operators nested in it.
// (With `shapes`, the key also lists the input shapes.)
std::string shapes_text(const std::vector<std::vector<int64_t>>& shapes) {
  std::string out;
  for (const auto& s : shapes) {
    out += "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
    out += "]";
  }
  return out;
}

std::map<std::string, Aggregate> self_times(const prof::thread_event_lists& lists, bool shapes) {
  std::map<std::string, Aggregate> out;
  for (const auto& events : lists) {
    struct Open {
      const prof::LegacyEvent* push;
      double children_us;
    };
    std::vector<Open> stack;
    for (const auto& e : events) {
      if (e.kind() == prof::EventKind::PushRange) {
        stack.push_back({&e, 0.0});
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double inclusive = open.push->cpuElapsedUs(e);
        Aggregate& a = out[std::string(open.push->name()) +
                           (shapes ? " " + shapes_text(open.push->shapes()) : "")];
        a.self_us += inclusive - open.children_us;
        ++a.calls;
        if (!stack.empty()) stack.back().children_us += inclusive;
      }
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string targets = "qv";
  int64_t steps = 4, seq = 256;
  bool shapes = false, bf16 = false, frozen_bf16 = true, qwen = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--targets=", 0) == 0) targets = a.substr(10);
    if (a.rfind("--steps=", 0) == 0) steps = std::stoll(a.substr(8));
    if (a.rfind("--seq=", 0) == 0) seq = std::stoll(a.substr(6));
    if (a == "--shapes") shapes = true;
    if (a == "--bf16") bf16 = peft::bench::g_low_precision = true;
    if (a == "--bf16-float-weights") frozen_bf16 = false;
    if (a == "--model=qwen2-0.5b") qwen = true;
  }
  const int64_t batch = qwen ? 1 : 4;
  peft::keep_freed_memory_for_reuse();  // as `peft train`
  peft::bench::print_runtime_header();
  torch::manual_seed(0);
  auto model =
      peft::models::from_config(qwen ? peft::bench::kQwen05BConfig : peft::bench::kLlamaConfig);
  model->train();
  auto pm = peft::get_peft_model(model,
                                 peft::bench::workload_lora_config(/*all_linear=*/targets != "qv"));
  if (bf16 && frozen_bf16) peft::train::store_frozen_linear_weights_in_bf16(*model);
  auto optimizer = peft::train::create_adamw_optimizer(*model, {.lr = 1e-4, .weight_decay = 0.0});
  const at::Tensor ids = torch::randint(0, model->vocab_size(), {batch, seq});
  const auto step = [&] { peft::bench::workload_train_step(*model, *optimizer, ids, bf16); };
  const auto timed = [&](int64_t n) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < n; ++i) step();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
           static_cast<double>(n);
  };
  timed(2);  // warm-up
  const double plain = timed(steps);
  prof::enableProfilerLegacy(
      torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU, shapes));
  const double profiled = timed(steps);
  const auto events = prof::disableProfilerLegacy();
  const auto agg = self_times(events, shapes);
  std::vector<std::pair<std::string, Aggregate>> rows(agg.begin(), agg.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  double total = 0;
  for (const auto& [name, a] : rows) total += a.self_us;
  std::printf("%s, LoRA %s%s%s, batch %lld x %lld: %.1f ms per step (%.1f ms under the profiler)\n",
              qwen ? "Qwen2-0.5B" : "small Llama", targets.c_str(), bf16 ? " (bf16 autocast)" : "",
              bf16 && !frozen_bf16 ? " (float32 frozen weights)" : "",
              static_cast<long long>(batch), static_cast<long long>(seq), plain * 1e3,
              profiled * 1e3);
  const size_t width = shapes ? 110 : 64;
  std::printf("%-*s %10s %7s %8s\n", static_cast<int>(width), "operator (self time)", "ms/step",
              "share", "calls");
  for (size_t i = 0; i < rows.size() && i < 40; ++i) {
    const auto& [name, a] = rows[i];
    std::printf("%-*s %10.2f %6.1f%% %8.1f\n", static_cast<int>(width),
                name.substr(0, width).c_str(), a.self_us / 1e3 / static_cast<double>(steps),
                100.0 * a.self_us / total,
                static_cast<double>(a.calls) / static_cast<double>(steps));
  }
  return 0;
}
