// LoRA on fused mixture-of-experts parameters at DECODE time, on ONE thread (LibTorch intra-op and
// OpenBLAS's own pool both set to --threads, default 1). Model: Qwen3-MoE-shaped (hidden 1024, 16/4
// heads of 64, --experts=16 experts, top-2, expert ff --ff=768, --layers=4, every layer sparse,
// vocab 8000, float32). LoRA as in PEFT's MoE example: target_modules q_proj, v_proj (r 16, alpha
// 32) + target_parameters mlp.experts.gate_up_proj, mlp.experts.down_proj with rank_pattern
// {"experts.gate_up_proj": R, "experts.down_proj": R} (R = --expert_r=8 per expert),
// init_lora_weights=false (both factors non-zero). Variants, in the same process:
//   base      the model without LoRA (a second model holding the same weights),
//   routed    LoRA, routed_lora = true: each hit expert's LoRA is added for its own tokens only,
//   all-exp   LoRA, routed_lora = false: P + the full delta of every expert is materialised each
//   forward (PEFT's
//             ParamWrapper),
//   merged    LoRA merged into the weights (merge_adapter() before the timed call,
//   unmerge_adapter() after).
// Workloads: one decode step (1 new token per row, KV cache of --cache=32 tokens) at batch 1 and 4,
// and a
// --prefill=64 token prefill at batch 1 for context. Every round runs every (workload, variant)
// once, shuffled; times are medians over --rounds=11 rounds (this VM drifts ~10%). Logits of routed
// and all-expert must agree (~1e-5).
//   build-release/bench/moe_bench [--rounds=N] [--layers=N] [--experts=N] [--ff=N] [--expert_r=N]
//   [--threads=N]
//                         [--cache=N] [--prefill=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "peft/lora/param.h"
#include "peft/models/model.h"
#include "peft/peft_model.h"

namespace {

int64_t g_rounds = 11;
int64_t g_layers = 4;
int64_t g_experts = 16;
int64_t g_ff = 768;
int64_t g_expert_r = 8;
int64_t g_threads = 1;
int64_t g_cache = 32;
int64_t g_prefill = 64;
constexpr int64_t kHidden = 1024;
constexpr int64_t kVocab = 8000;
constexpr int64_t kTopK = 2;

enum Variant : int { kBase = 0, kRouted = 1, kAllExpert = 2, kMerged = 3 };
constexpr int kVariants = 4;
const char* kVariantNames[kVariants] = {"base (no LoRA)", "LoRA routed-only",
                                        "LoRA all-expert (PEFT)", "LoRA merged"};

struct Workload {
  const char* name;
  int64_t batch;
  bool decode;  // one new token per row on a prefilled cache; else a prefill of g_prefill tokens
};
const Workload kWorkloads[] = {
    {"decode, batch 1", 1, true}, {"decode, batch 4", 4, true}, {"prefill, batch 1", 1, false}};
constexpr int kNumWorkloads = 3;

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }
std::string fmt_e(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

std::string config_json() {
  return R"({"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "vocab_size": )" +
         std::to_string(kVocab) + R"(, "hidden_size": )" + std::to_string(kHidden) +
         R"(, "intermediate_size": 2816, "moe_intermediate_size": )" + std::to_string(g_ff) +
         R"(, "num_hidden_layers": )" + std::to_string(g_layers) +
         R"(, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 64, "num_experts": )" +
         std::to_string(g_experts) + R"(, "num_experts_per_tok": )" + std::to_string(kTopK) +
         R"(, "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": false, "torch_dtype": "float32"})";
}

// ---- results, printed by the reporter ----
struct Results {
  bool done = false;
  std::string error;
  double ms[kNumWorkloads][kVariants] = {};
  double first_ms[kNumWorkloads][kVariants] = {};
  double merge_ms = -1, unmerge_ms = -1;
  // Correctness, per workload: max |diff| of the logits.
  double routed_vs_all[kNumWorkloads] = {}, merged_vs_routed[kNumWorkloads] = {},
         lora_vs_base[kNumWorkloads] = {}, disabled_vs_base[kNumWorkloads] = {},
         logits_max[kNumWorkloads] = {};
  double materialise_ms =
      -1;             // one layer: param("gate_up_proj") + param("down_proj") with the LoRA live
  double drift = -1;  // max |P - P_base| over every parameter after all merge / unmerge cycles
  int64_t param_modules = 0, param_slots = 0, base_params = 0, lora_params = 0,
          expert_params_per_layer = 0;
  std::string peft_line;
  long hwm_kb = -1;
  double setup_ms = 0;
};
Results g_res;

struct Setup {
  std::shared_ptr<peft::models::PretrainedModel> base, lora;
  std::shared_ptr<peft::PeftModel> peft;
  std::vector<std::shared_ptr<peft::nn::ParamModuleImpl>> param_modules;
  // Per workload: input ids and (decode) the prefilled caches of the base and the LoRA model.
  at::Tensor ids[kNumWorkloads];
  peft::models::KVCache cache_base[kNumWorkloads], cache_lora[kNumWorkloads];
};

void set_routed(Setup& s, bool routed) {
  for (auto& m : s.param_modules) m->routed_lora = routed;
}

// One forward of `variant` on workload w (the merged state is the caller's business). The cache is
// copied (the forward appends to its own copy: the layers replace the tensors, never write into
// them).
at::Tensor forward(Setup& s, int variant, int w) {
  const bool lora = variant != kBase;
  peft::models::ForwardInput in;
  in.input_ids = s.ids[w];
  peft::models::KVCache cache;
  if (kWorkloads[w].decode) cache = lora ? s.cache_lora[w] : s.cache_base[w];
  in.cache = &cache;
  if (lora) set_routed(s, variant != kAllExpert);
  return (lora ? s.lora : s.base)->forward(in);
}

void BM_MoeDecode(benchmark::State& state) {
  Results& r = g_res;
  torch::NoGradGuard no_grad;
  Setup s;
  try {
    auto t0 = std::chrono::steady_clock::now();
    torch::manual_seed(0);
    s.base = peft::models::from_config(config_json());
    s.lora = peft::models::from_config(config_json());
    for (auto* m : {s.base.get(), s.lora.get()}) {
      m->eval();
      for (auto& p : m->parameters()) p.set_requires_grad(false);
    }
    {  // same base weights in both
      auto dst = s.lora->named_parameters();
      for (const auto& item : s.base->named_parameters()) dst[item.key()].copy_(item.value());
    }
    for (const auto& p : s.base->parameters()) r.base_params += p.numel();
    r.expert_params_per_layer = g_experts * 3 * g_ff * kHidden;

    peft::LoraConfig c;
    c.r = 16;
    c.lora_alpha = 32;
    c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
    c.target_parameters =
        std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"};
    c.rank_pattern = {{"experts.gate_up_proj", static_cast<int>(g_expert_r)},
                      {"experts.down_proj", static_cast<int>(g_expert_r)}};
    c.init_lora_weights.kind =
        peft::InitLoraWeights::Kind::kFalse;  // B != 0: the paths compute something
    s.peft = peft::get_peft_model(s.lora, c, "default");
    s.lora->eval();
    r.peft_line = s.peft->trainable_parameters_line();
    r.lora_params = s.peft->get_nb_trainable_parameters().first;
    for (const auto& item : s.lora->named_modules()) {
      if (auto pm = std::dynamic_pointer_cast<peft::nn::ParamModuleImpl>(item.value())) {
        s.param_modules.push_back(pm);
        r.param_slots += static_cast<int64_t>(pm->targeted_parameters().size());
      }
    }
    r.param_modules = static_cast<int64_t>(s.param_modules.size());

    // Inputs and prefilled caches (each model fills its own; the LoRA caches with routed LoRA).
    for (int w = 0; w < kNumWorkloads; ++w) {
      const Workload& wl = kWorkloads[w];
      s.ids[w] = torch::randint(0, kVocab, {wl.batch, wl.decode ? 1 : g_prefill}, torch::kLong);
      if (!wl.decode) continue;
      const at::Tensor prompt = torch::randint(0, kVocab, {wl.batch, g_cache}, torch::kLong);
      set_routed(s, true);
      for (auto [model, cache] : {std::make_pair(s.base.get(), &s.cache_base[w]),
                                  std::make_pair(s.lora.get(), &s.cache_lora[w])}) {
        peft::models::ForwardInput in;
        in.input_ids = prompt;
        in.cache = cache;
        (void)model->forward(in);
      }
    }
    r.setup_ms = peft::bench::ms_since(t0);

    // The base path of the LoRA model (adapters disabled) on the base model's cache, before any
    // merge: the same weights as the base model?
    for (int w = 0; w < kNumWorkloads; ++w) {
      const at::Tensor base_out = forward(s, kBase, w);
      auto guard = s.peft->disable_adapter();
      peft::models::ForwardInput in;
      in.input_ids = s.ids[w];
      peft::models::KVCache cache;
      if (kWorkloads[w].decode) cache = s.cache_base[w];
      in.cache = &cache;
      set_routed(s, true);
      r.disabled_vs_base[w] = max_abs(s.lora->forward(in) - base_out);
    }

    // Correctness, and the cold (first) calls.
    for (int w = 0; w < kNumWorkloads; ++w) {
      at::Tensor out[kVariants];
      for (int v = 0; v < kVariants; ++v) {
        if (v == kMerged) {
          t0 = std::chrono::steady_clock::now();
          s.peft->merge_adapter();
          if (w == 0) r.merge_ms = peft::bench::ms_since(t0);
        }
        t0 = std::chrono::steady_clock::now();
        out[v] = forward(s, v, w);
        r.first_ms[w][v] = peft::bench::ms_since(t0);
        if (v == kMerged) {
          t0 = std::chrono::steady_clock::now();
          s.peft->unmerge_adapter();
          if (w == 0) r.unmerge_ms = peft::bench::ms_since(t0);
        }
      }
      r.routed_vs_all[w] = max_abs(out[kRouted] - out[kAllExpert]);
      r.merged_vs_routed[w] = max_abs(out[kMerged] - out[kRouted]);
      r.lora_vs_base[w] = max_abs(out[kRouted] - out[kBase]);
      r.logits_max[w] = max_abs(out[kRouted]);
    }

    std::vector<std::pair<int, int>> order;  // (workload, variant)
    for (int w = 0; w < kNumWorkloads; ++w) {
      for (int v = 0; v < kVariants; ++v) order.emplace_back(w, v);
    }
    std::vector<double> times[kNumWorkloads][kVariants];
    std::mt19937 rng(0);
    for (auto _ : state) {
      std::shuffle(order.begin(), order.end(), rng);
      for (auto [w, v] : order) {
        if (v == kMerged) s.peft->merge_adapter();  // untimed
        t0 = std::chrono::steady_clock::now();
        at::Tensor y = forward(s, v, w);
        benchmark::DoNotOptimize(y.data_ptr());
        times[w][v].push_back(peft::bench::ms_since(t0));
        if (v == kMerged) s.peft->unmerge_adapter();
      }
    }
    for (int w = 0; w < kNumWorkloads; ++w) {
      for (int v = 0; v < kVariants; ++v) r.ms[w][v] = peft::bench::median(times[w][v]);
    }
    // PEFT's materialisation alone: P + delta of every expert (ParamModuleImpl::param ->
    // ParamLoraImpl::effective) for one layer's two expert parameters.
    {
      const auto& pm = s.param_modules.front();
      std::vector<double> t;
      for (int i = 0; i < 5; ++i) {
        t0 = std::chrono::steady_clock::now();
        at::Tensor gu = pm->param("gate_up_proj");
        at::Tensor dn = pm->param("down_proj");
        benchmark::DoNotOptimize(gu.data_ptr());
        benchmark::DoNotOptimize(dn.data_ptr());
        t.push_back(peft::bench::ms_since(t0));
      }
      r.materialise_ms = peft::bench::median(t);
    }
    // What the merge / unmerge cycles left in the LoRA model's base weights.
    r.drift = 0;
    const auto base_params = s.base->named_parameters();
    for (const auto& item : s.lora->named_parameters()) {
      const at::Tensor* p = base_params.find(item.key());
      if (p) r.drift = std::max(r.drift, max_abs(item.value() - *p));
    }
    r.hwm_kb = peft::bench::read_status_kb("VmHWM");
    r.done = true;
  } catch (const std::exception& e) {
    r.error = e.what();
    state.SkipWithError(e.what());
  }
}

class MoeReporter : public peft::bench::TimesReporter {
 public:
  // No colour codes when the output goes to a file (the shared reporter ignores --benchmark_color).
  MoeReporter() {
    if (!isatty(fileno(stdout))) output_options_ = OO_Tabular;
  }
  void Finalize() override {
    TimesReporter::Finalize();
    const Results& r = g_res;
    std::printf(
        "\n## MoE LoRA at decode time: Qwen3-MoE-shaped model (hidden %lld, %lld layers, all "
        "sparse, %lld experts, "
        "top-%lld, expert ff %lld, 16/4 heads x 64, vocab %lld, float32)\n\n",
        static_cast<long long>(kHidden), static_cast<long long>(g_layers),
        static_cast<long long>(g_experts), static_cast<long long>(kTopK),
        static_cast<long long>(g_ff), static_cast<long long>(kVocab));
    if (!r.error.empty()) std::printf("ERROR: %s\n\n", r.error.c_str());
    if (!r.done) return;
    std::printf(
        "LoRA: q_proj, v_proj r=16 alpha=32; mlp.experts.gate_up_proj, mlp.experts.down_proj "
        "r=%lld per expert "
        "(rank_pattern), alpha 32; init_lora_weights=false.\n",
        static_cast<long long>(g_expert_r));
    std::printf("%lld base parameters (%lld expert parameters per layer = %.1f MiB float32); %s\n",
                static_cast<long long>(r.base_params),
                static_cast<long long>(r.expert_params_per_layer),
                static_cast<double>(r.expert_params_per_layer) * 4.0 / (1024.0 * 1024.0),
                r.peft_line.c_str());
    std::printf(
        "%lld ParamModules (mlp.experts) with %lld LoRA'd parameters; setup %.0f ms; merge_adapter "
        "%.0f ms, "
        "unmerge_adapter %.0f ms; VmHWM %.0f MiB.\n",
        static_cast<long long>(r.param_modules), static_cast<long long>(r.param_slots), r.setup_ms,
        r.merge_ms, r.unmerge_ms, static_cast<double>(r.hwm_kb) / 1024.0);

    std::printf(
        "\n### Time per forward, median of %lld interleaved rounds, ms (ratio to base)\n\n"
        "decode = one new token per row on a KV cache of %lld tokens; prefill = %lld tokens, empty "
        "cache.\n\n",
        static_cast<long long>(g_rounds), static_cast<long long>(g_cache),
        static_cast<long long>(g_prefill));
    std::printf("| workload |");
    for (int v = 0; v < kVariants; ++v) std::printf(" %s |", kVariantNames[v]);
    std::printf(" all-expert / routed |\n|---|");
    for (int v = 0; v <= kVariants; ++v) std::printf("---|");
    std::printf("\n");
    for (int w = 0; w < kNumWorkloads; ++w) {
      std::printf("| %s |", kWorkloads[w].name);
      for (int v = 0; v < kVariants; ++v) {
        if (v == kBase) {
          std::printf(" %.2f |", r.ms[w][v]);
        } else {
          std::printf(" %.2f (%.2fx) |", r.ms[w][v], r.ms[w][v] / r.ms[w][kBase]);
        }
      }
      std::printf(" %.2fx |\n", r.ms[w][kAllExpert] / r.ms[w][kRouted]);
    }
    std::printf(
        "\nPEFT's materialisation alone (P + delta of all %lld experts, gate_up_proj + down_proj "
        "of one layer): "
        "%.1f ms median of 5, x %lld layers = %.1f ms per forward.\n",
        static_cast<long long>(g_experts), r.materialise_ms, static_cast<long long>(g_layers),
        r.materialise_ms * static_cast<double>(g_layers));
    std::printf(
        "\nFirst call of each variant (the correctness pass, after one base forward per workload), "
        "ms:\n\n| workload |");
    for (int v = 0; v < kVariants; ++v) std::printf(" %s |", kVariantNames[v]);
    std::printf("\n|---|");
    for (int v = 0; v < kVariants; ++v) std::printf("---|");
    std::printf("\n");
    for (int w = 0; w < kNumWorkloads; ++w) {
      std::printf("| %s |", kWorkloads[w].name);
      for (int v = 0; v < kVariants; ++v) std::printf(" %.2f |", r.first_ms[w][v]);
      std::printf("\n");
    }

    std::printf(
        "\n### Logits, max |diff|\n\n"
        "| workload | routed vs all-expert | merged vs routed | LoRA (routed) vs base | LoRA "
        "disabled vs base | "
        "max |logit| (routed) |\n|---|---|---|---|---|---|\n");
    bool ok = true;
    for (int w = 0; w < kNumWorkloads; ++w) {
      std::printf("| %s | %s | %s | %s | %s | %s |\n", kWorkloads[w].name,
                  fmt_e(r.routed_vs_all[w]).c_str(), fmt_e(r.merged_vs_routed[w]).c_str(),
                  fmt_e(r.lora_vs_base[w]).c_str(), fmt_e(r.disabled_vs_base[w]).c_str(),
                  fmt_e(r.logits_max[w]).c_str());
      ok = ok && r.routed_vs_all[w] <= 1e-5 * std::max(1.0, r.logits_max[w]);
    }
    std::printf(
        "\nrouted-only vs all-expert: %s (tolerance 1e-5 x max(1, max |logit|)). After %lld merge "
        "/ unmerge "
        "cycles the LoRA model's weights differ from the base model's by at most %s.\n",
        ok ? "AGREE" : "DISAGREE", static_cast<long long>((1 + g_rounds) * kNumWorkloads),
        fmt_e(r.drift).c_str());
  }
};

}  // namespace

int main(int argc, char** argv) {
  peft::bench::read_int_flags(argc, argv,
                              {{"rounds", &g_rounds},
                               {"layers", &g_layers},
                               {"experts", &g_experts},
                               {"ff", &g_ff},
                               {"expert_r", &g_expert_r},
                               {"threads", &g_threads},
                               {"cache", &g_cache},
                               {"prefill", &g_prefill}});
  peft::bench::print_runtime_header(static_cast<int>(g_threads));
  // Registered here so that --rounds sets the iterations (one iteration = one interleaved round).
  benchmark::RegisterBenchmark("BM_MoeDecode", BM_MoeDecode)
      ->Iterations(g_rounds)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  MoeReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
