// layer_replication on a Llama-shaped model (hidden 1024, 8 layers, GQA 16/8 heads, vocab 32000,
// random weights, float32) expanded to 16 layers ([[0, 8], [0, 8]]): the time replicate_layers
// takes, a prefill of the replicated model next to a 16-layer model with its own weights, and the
// resident memory of each (measured in a child process per variant, because a process's high-water
// mark only grows): the copies share their sources' tensors, so replication should add no
// base-weight memory.
//   build-release/bench/layer_replication_bench [--prompt=N]
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <unordered_set>

#include "bench_util.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace {

int64_t g_prompt = 128;

enum Variant : int64_t { kBase8 = 0, kReplicated16 = 1, kDuplicated16 = 2, kReplicatedLora = 3 };
const char* kNames[] = {"base, 8 layers", "replicated to 16", "16 own layers", "replicated + LoRA"};

std::shared_ptr<peft::models::PretrainedModel> make_model(int64_t layers) {
  torch::manual_seed(0);
  auto model = peft::models::from_config(
      R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
          "intermediate_size": 2816, "num_hidden_layers": )" +
      std::to_string(layers) + R"(, "num_attention_heads": 16, "num_key_value_heads": 8,
          "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
          "rope_theta": 10000.0, "tie_word_embeddings": false})");
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  return model;
}

const std::vector<std::pair<int64_t, int64_t>> kRanges{{0, 8}, {0, 8}};

struct Built {
  std::shared_ptr<peft::models::PretrainedModel> model;
  std::shared_ptr<peft::PeftModel> peft;
};

Built make(Variant v) {
  Built b;
  b.model = make_model(v == kDuplicated16 ? 16 : 8);
  if (v == kReplicated16) b.model->replicate_layers(kRanges);
  if (v == kReplicatedLora) {
    peft::LoraConfig c;
    c.r = 16;
    c.lora_alpha = 32;
    c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
    c.layer_replication = kRanges;
    b.peft = peft::get_peft_model(b.model, c);
  }
  return b;
}

void BM_Replicate(benchmark::State& state) {
  for (auto _ : state) {
    state.PauseTiming();
    auto model = make_model(8);
    state.ResumeTiming();
    model->replicate_layers(kRanges);
    benchmark::DoNotOptimize(model);
    state.PauseTiming();
    model.reset();
    state.ResumeTiming();
  }
}
BENCHMARK(BM_Replicate)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

void BM_Prefill(benchmark::State& state) {
  Built b = make(static_cast<Variant>(state.range(0)));
  const at::Tensor ids = torch::randint(0, 32000, {1, g_prompt});
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(b.model->forward({ids}));
  state.SetItemsProcessed(state.iterations() * g_prompt);
  state.SetLabel(kNames[state.range(0)]);
}
BENCHMARK(BM_Prefill)
    ->Arg(kReplicated16)
    ->Arg(kDuplicated16)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

// Child mode: build the variant and print "<VmRSS kB> <VmRSS kB after malloc_trim> <VmHWM kB>
// <distinct parameter bytes>". glibc may keep memory freed during construction (the random weights
// of replication's freshly built layers, dropped for the sources' tensors) until malloc_trim.
int memory_child(Variant v) {
  peft::set_num_threads();
  Built b = make(v);
  const long rss = peft::bench::read_status_kb("VmRSS");
  malloc_trim(0);
  std::unordered_set<const void*> seen;
  int64_t bytes = 0;
  for (const auto& p : b.model->parameters()) {
    if (seen.insert(p.unsafeGetTensorImpl()).second) bytes += p.numel() * p.element_size();
  }
  std::printf("%ld %ld %ld %lld\n", rss, peft::bench::read_status_kb("VmRSS"),
              peft::bench::read_status_kb("VmHWM"), static_cast<long long>(bytes));
  return 0;
}

class ReplicationReporter : public peft::bench::TimesReporter {
 public:
  explicit ReplicationReporter(std::string self) : self_(std::move(self)) {}
  void Finalize() override {
    TimesReporter::Finalize();
    std::printf("\nresident memory after building (a child process per variant, MiB):\n");
    std::printf("  %-18s %8s %16s %8s %11s\n", "variant", "RSS", "trimmed (+base)", "peak",
                "parameters");
    double base = -1;
    for (int64_t v = 0; v < 4; ++v) {
      long rss = -1, trimmed = -1, hwm = -1;
      long long bytes = -1;
      const std::string cmd = self_ + " --memory-variant=" + std::to_string(v);
      if (FILE* p = popen(cmd.c_str(), "r")) {
        if (std::fscanf(p, "%ld %ld %ld %lld", &rss, &trimmed, &hwm, &bytes) != 4) rss = -1;
        pclose(p);
      }
      auto mib = [](double kb) { return kb / 1024.0; };
      if (v == kBase8) base = mib(static_cast<double>(trimmed));
      std::printf("  %-18s %8.1f %7.1f (%+6.1f) %8.1f %11.1f\n", kNames[v],
                  mib(static_cast<double>(rss)), mib(static_cast<double>(trimmed)),
                  mib(static_cast<double>(trimmed)) - base, mib(static_cast<double>(hwm)),
                  static_cast<double>(bytes) / 1048576.0);
    }
    const double rep = time("BM_Prefill/variant:1"), dup = time("BM_Prefill/variant:2");
    if (rep > 0 && dup > 0) std::printf("prefill time replicated / own layers: %.3f\n", rep / dup);
  }

 private:
  std::string self_;
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--memory-variant=", 0) == 0) {
      return memory_child(static_cast<Variant>(std::stoll(a.substr(17))));
    }
  }
  ReplicationReporter reporter(argv[0]);
  return peft::bench::run_benchmarks(argc, argv, "prompt", g_prompt, reporter);
}
