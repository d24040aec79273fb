// QLoRA-style quantized bases against the float baseline, in the same process, on ONE thread
// (LibTorch intra-op and OpenBLAS's own pool both set to --threads, default 1):
//  1. Linear forward y = x W^T (no bias, float32) for W (out x in) = 4096 x 4096 and 2048 x 8192, x
//  = 1 and 16
//     tokens: float at::linear vs QuantizedWeight::linear with nf4, nf4 + double quant, fp4 and
//     int8 (LLM.int8, threshold 0), blocksize 64; time ratio to float, plus a correctness check of
//     every kernel.
//  2. One LoRA (r = 16) training step on the same Linear (peft::nn::Linear, x.requires_grad):
//  forward + backward to
//     lora_A, lora_B and x, 16 and 128 tokens, float base vs nf4 base; ratio, plus the gradients of
//     the nf4 layer against a float layer holding the dequantized weight.
//  3. Memory: resident bytes of one weight per method (float numel*4 vs QuantizedWeight::nbytes()),
//  and of a
//     Llama-shaped model (hidden 2048, intermediate 5632, 32/4 heads, vocab 32000, --layers=8,
//     float32) before and after NF4 (every Linear but lm_head; embeddings stay float, as
//     transformers does). Bytes = sum over model->parameters() of numel * element_size (a quantized
//     weight is its packed uint8 parameter) + for every quantized layer QuantizedWeight::nbytes() -
//     packed bytes (its statistics). Process RSS as a second view.
// Timings are medians of interleaved rounds (each round runs every variant once, shuffled): this VM
// drifts ~10%.
//   build-release/bench/quant_bench [--rounds=N] [--layers=N] [--threads=N]
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../src/models/quantize_model.h"
#include "bench_util.h"
#include "peft/lora/linear.h"
#include "peft/models/model.h"
#include "peft/quant/quantized_weight.h"

namespace {

using peft::quant::QuantizedWeight;
using peft::quant::QuantizeOptions;
using peft::quant::QuantMethod;

int64_t g_rounds = 21;
int64_t g_layers = 8;
int64_t g_threads = 1;

struct Shape {
  int64_t out, in;
};
const Shape kShapes[] = {{4096, 4096}, {2048, 8192}};
const int64_t kForwardTokens[] = {1, 16};
const int64_t kTrainTokens[] = {16, 128};

// Forward variants: 0 = float at::linear, then the quantized methods.
constexpr int kMethods = 5;
const char* kMethodNames[kMethods] = {"float32", "nf4", "nf4+dq", "fp4", "int8"};
QuantizeOptions method_options(int m) {
  QuantizeOptions o;
  o.blocksize = 64;
  o.method = m == 4 ? QuantMethod::kInt8 : (m == 3 ? QuantMethod::kFP4 : QuantMethod::kNF4);
  o.double_quant = m == 2;
  return o;
}

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}
std::string shape_name(const Shape& s) {
  return std::to_string(s.out) + "x" + std::to_string(s.in);
}

// ---- results, printed by the reporter ----
struct ForwardResult {
  double ms[2][kMethods] = {};  // [token index][method] median
  double quantize_ms[kMethods] = {};
  int64_t weight_bytes[kMethods] = {};  // float numel*4, QuantizedWeight::nbytes()
  int64_t payload_bytes[kMethods] =
      {};  // bitsandbytes' stored tensors (no resident float32 absmax copy)
  double err_kernel[kMethods] = {};  // ||linear - x deq(W)^T|| / ||x deq(W)^T|| (16 tokens)
  double err_float[kMethods] =
      {};  // ||linear - x W^T|| / ||x W^T|| (quantization error, 16 tokens)
  bool done = false;
};
ForwardResult g_forward[2];

struct TrainResult {
  double ms[2][2] = {};  // [token index][0 float base, 1 nf4 base]
  double err_y = -1, err_gx = -1, err_gA = -1, err_gB = -1, err_layer_vs_kernel = -1;
  std::string lora_dtype;
  bool done = false;
};
TrainResult g_train[2];

struct MemoryResult {
  bool done = false;
  std::string error;
  int64_t n_params = 0, n_quantized = 0;
  int64_t float_bytes = 0, nf4_param_bytes = 0, nf4_stat_bytes = 0, buffer_bytes = 0;
  int64_t quantizable_float = 0, quantizable_nf4 = 0;  // the quantized Linear layers alone
  int64_t layer0_float = 0, layer0_nf4 = 0;  // one decoder layer (for the 22-layer projection)
  long rss_start = -1, rss_float = -1, rss_nf4 = -1, rss_trim = -1, hwm = -1;
  double build_ms = 0, quantize_ms = 0, fwd_float_ms = 0, fwd_nf4_ms = 0, logits_err = -1;
};
MemoryResult g_mem;

// ---------------------------------------------------------------------------------------------------------
// 1. Linear forward
void BM_QuantLinearForward(benchmark::State& state) {
  const Shape shape = kShapes[state.range(0)];
  ForwardResult& res = g_forward[state.range(0)];
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const at::Tensor W = torch::randn({shape.out, shape.in}) * 0.02;  // Llama's init std
  std::vector<std::shared_ptr<QuantizedWeight>> qw(kMethods);
  res.weight_bytes[0] = res.payload_bytes[0] = W.numel() * 4;
  for (int m = 1; m < kMethods; ++m) {
    const auto t0 = std::chrono::steady_clock::now();
    qw[m] = QuantizedWeight::quantize(W, method_options(m));
    res.quantize_ms[m] = peft::bench::ms_since(t0);
    res.weight_bytes[m] = qw[m]->nbytes();
    int64_t payload = 0;
    if (m == 4) {
      payload = qw[m]->q8().CB.nbytes() + qw[m]->q8().SCB.nbytes();
    } else {
      const auto& q = qw[m]->q4();
      for (const at::Tensor& t : {q.packed, q.absmax, q.nested_absmax, q.nested_code}) {
        if (t.defined()) payload += t.nbytes();
      }
      payload += 16 * 4;  // the code book (bitsandbytes' quant_map)
    }
    res.payload_bytes[m] = payload;
  }
  std::vector<at::Tensor> xs;
  for (int64_t t : kForwardTokens) xs.push_back(torch::randn({t, shape.in}));
  const at::Tensor undefined_bias;
  auto run = [&](int m, const at::Tensor& x) {
    return m == 0 ? at::linear(x, W) : qw[m]->linear(x, undefined_bias);
  };

  // Correctness (16 tokens): against the dequantized weight (the kernel) and the float weight
  // (quantization).
  const at::Tensor& x16 = xs[1];
  const at::Tensor y_float = at::linear(x16, W);
  for (int m = 1; m < kMethods; ++m) {
    const at::Tensor y = run(m, x16);
    res.err_kernel[m] = rel_err(y, at::linear(x16, qw[m]->dequantize()));
    res.err_float[m] = rel_err(y, y_float);
  }

  std::vector<std::pair<int, int>> order;  // (token index, method)
  for (int t = 0; t < 2; ++t) {
    for (int m = 0; m < kMethods; ++m) {
      order.emplace_back(t, m);
      benchmark::DoNotOptimize(run(m, xs[t]));  // warm-up
    }
  }
  std::vector<double> times[2][kMethods];
  std::mt19937 rng(static_cast<unsigned>(state.range(0)));
  for (auto _ : state) {
    std::shuffle(order.begin(), order.end(), rng);
    for (auto [t, m] : order) {
      const auto t0 = std::chrono::steady_clock::now();
      at::Tensor y = run(m, xs[t]);
      benchmark::DoNotOptimize(y.data_ptr());
      times[t][m].push_back(peft::bench::ms_since(t0));
    }
  }
  for (int t = 0; t < 2; ++t) {
    for (int m = 0; m < kMethods; ++m) res.ms[t][m] = peft::bench::median(times[t][m]);
  }
  res.done = true;
}

// ---------------------------------------------------------------------------------------------------------
// 2. LoRA training step: forward + backward to lora_A, lora_B and x
peft::nn::Linear make_lora_linear(const at::Tensor& W, bool nf4) {
  peft::nn::Linear layer(W.size(1), W.size(0), /*bias=*/false);
  {
    torch::NoGradGuard no_grad;
    layer->weight().copy_(W);
  }
  layer->weight().set_requires_grad(false);     // frozen base (PEFT's get_peft_model)
  if (nf4) layer->quantize(method_options(1));  // QLoRA order: quantize, then add the adapter
  peft::nn::AdapterSettings s;
  s.r = 16;
  s.lora_alpha = 32;
  s.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;  // B != 0
  layer->update_layer("default", s);
  layer->set_active_adapters({"default"});
  layer->train();
  return layer;
}

void BM_QuantLoraTrainStep(benchmark::State& state) {
  const Shape shape = kShapes[state.range(0)];
  TrainResult& res = g_train[state.range(0)];
  torch::manual_seed(1);
  const at::Tensor W = torch::randn({shape.out, shape.in}) * 0.02;
  peft::nn::Linear layers[2] = {make_lora_linear(W, false), make_lora_linear(W, true)};
  {  // same factors in both
    torch::NoGradGuard no_grad;
    for (const char* key : {"lora_A.weight", "lora_B.weight"}) {
      layers[0]->adapter_tensor("default", key).copy_(layers[1]->adapter_tensor("default", key));
    }
  }
  res.lora_dtype = std::string(
      c10::toString(layers[1]->adapter_tensor("default", "lora_A.weight").scalar_type()));
  std::vector<at::Tensor> xs, gys;
  for (int64_t t : kTrainTokens) {
    xs.push_back(torch::randn({t, shape.in}).requires_grad_(true));
    gys.push_back(torch::randn({t, shape.out}));
  }
  auto zero_grads = [&](int v, int t) {
    xs[t].mutable_grad() = at::Tensor();
    for (const char* key : {"lora_A.weight", "lora_B.weight"}) {
      layers[v]->adapter_tensor("default", key).mutable_grad() = at::Tensor();
    }
  };
  auto step = [&](int v, int t) {
    zero_grads(v, t);
    at::Tensor y = layers[v]->forward(xs[t]);
    y.backward(gys[t]);
    return y;
  };

  // Correctness (16 tokens): the nf4 layer against a float layer holding the dequantized weight,
  // same factors.
  {
    const at::Tensor Wd = layers[1]->quantized_weight()->dequantize();
    peft::nn::Linear ref = make_lora_linear(Wd, false);
    {
      torch::NoGradGuard no_grad;
      for (const char* key : {"lora_A.weight", "lora_B.weight"}) {
        ref->adapter_tensor("default", key).copy_(layers[1]->adapter_tensor("default", key));
      }
    }
    const at::Tensor y = step(1, 0).detach();
    const at::Tensor gx = xs[0].grad().clone(),
                     gA = layers[1]->adapter_tensor("default", "lora_A.weight").grad().clone(),
                     gB = layers[1]->adapter_tensor("default", "lora_B.weight").grad().clone();
    xs[0].mutable_grad() = at::Tensor();
    at::Tensor yr = ref->forward(xs[0]);
    yr.backward(gys[0]);
    res.err_y = rel_err(y, yr.detach());
    res.err_gx = rel_err(gx, xs[0].grad());
    res.err_gA = rel_err(gA, ref->adapter_tensor("default", "lora_A.weight").grad());
    res.err_gB = rel_err(gB, ref->adapter_tensor("default", "lora_B.weight").grad());
    torch::NoGradGuard no_grad;
    // The layer's base path is the QuantizedWeight kernel: y_layer - s B A x == kernel(x)?
    const at::Tensor x = xs[0].detach();
    const at::Tensor A = layers[1]->adapter_tensor("default", "lora_A.weight");
    const at::Tensor B = layers[1]->adapter_tensor("default", "lora_B.weight");
    const at::Tensor base = y - layers[1]->scaling("default") * at::linear(at::linear(x, A), B);
    res.err_layer_vs_kernel = rel_err(base, layers[1]->quantized_weight()->linear(x, at::Tensor()));
  }

  std::vector<std::pair<int, int>> order;  // (token index, variant)
  for (int t = 0; t < 2; ++t) {
    for (int v = 0; v < 2; ++v) {
      order.emplace_back(t, v);
      benchmark::DoNotOptimize(step(v, t));  // warm-up
    }
  }
  std::vector<double> times[2][2];
  std::mt19937 rng(static_cast<unsigned>(10 + state.range(0)));
  for (auto _ : state) {
    std::shuffle(order.begin(), order.end(), rng);
    for (auto [t, v] : order) {
      const auto t0 = std::chrono::steady_clock::now();
      at::Tensor y = step(v, t);
      benchmark::DoNotOptimize(y.data_ptr());
      times[t][v].push_back(peft::bench::ms_since(t0));
    }
  }
  for (int t = 0; t < 2; ++t) {
    for (int v = 0; v < 2; ++v) res.ms[t][v] = peft::bench::median(times[t][v]);
  }
  res.done = true;
}

// ---------------------------------------------------------------------------------------------------------
// 3. Whole-model memory, float vs NF4
int64_t tensor_bytes(const at::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

struct ModelBytes {
  int64_t params = 0, stats = 0, quantizable = 0, layer0 = 0, buffers = 0;
  int64_t quantized_layers = 0;
};
ModelBytes count_bytes(peft::models::PretrainedModel& model) {
  ModelBytes b;
  for (const auto& p : model.parameters()) b.params += tensor_bytes(p);
  for (const auto& buf : model.buffers()) b.buffers += tensor_bytes(buf);
  const std::string head = model.output_embedding_name();
  for (const auto& [name, layer] : peft::nn::lora_layers(model)) {
    auto linear = std::dynamic_pointer_cast<peft::nn::LinearImpl>(layer);
    if (!linear || layer->kind() != peft::nn::LayerKind::kLinear || name == head) continue;
    int64_t bytes =
        tensor_bytes(linear->weight()) + (linear->has_bias() ? tensor_bytes(linear->bias()) : 0);
    if (linear->is_quantized()) {
      const int64_t stats = linear->quantized_weight()->nbytes() - tensor_bytes(linear->weight());
      b.stats += stats;
      bytes += stats;
      ++b.quantized_layers;
    }
    b.quantizable += bytes;
  }
  for (const auto& item : model.named_parameters()) {
    if (item.key().rfind("model.layers.0.", 0) == 0) b.layer0 += tensor_bytes(item.value());
  }
  for (const auto& [name, layer] : peft::nn::lora_layers(model)) {
    if (name.rfind("model.layers.0.", 0) != 0 || !layer->is_quantized()) continue;
    auto linear = std::dynamic_pointer_cast<peft::nn::LinearImpl>(layer);
    b.layer0 += linear->quantized_weight()->nbytes() - tensor_bytes(linear->weight());
  }
  return b;
}

void BM_QuantModelMemory(benchmark::State& state) {
  MemoryResult& r = g_mem;
  for (auto _ : state) {
    try {
      malloc_trim(0);
      r.rss_start = peft::bench::read_status_kb("VmRSS");
      torch::manual_seed(0);
      auto t0 = std::chrono::steady_clock::now();
      auto model = peft::models::from_config(
          R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
              "intermediate_size": 5632, "num_hidden_layers": )" +
          std::to_string(g_layers) +
          R"(, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": false, "torch_dtype": "float32"})");
      r.build_ms = peft::bench::ms_since(t0);
      model->eval();
      for (auto& p : model->parameters()) p.set_requires_grad(false);
      r.rss_float = peft::bench::read_status_kb("VmRSS");
      for (const auto& p : model->parameters()) r.n_params += p.numel();
      const ModelBytes fb = count_bytes(*model);
      r.float_bytes = fb.params;
      r.buffer_bytes = fb.buffers;
      r.quantizable_float = fb.quantizable;
      r.layer0_float = fb.layer0;

      torch::NoGradGuard no_grad;
      const at::Tensor ids = torch::randint(0, 32000, {1, 8}, torch::kLong);
      t0 = std::chrono::steady_clock::now();
      const at::Tensor logits_float = model->forward({ids});
      r.fwd_float_ms = peft::bench::ms_since(t0);

      t0 = std::chrono::steady_clock::now();
      r.n_quantized =
          static_cast<int64_t>(peft::models::detail::quantize_model(*model, method_options(1)));
      r.quantize_ms = peft::bench::ms_since(t0);
      r.rss_nf4 = peft::bench::read_status_kb("VmRSS");
      malloc_trim(0);
      r.rss_trim = peft::bench::read_status_kb("VmRSS");
      const ModelBytes qb = count_bytes(*model);
      r.nf4_param_bytes = qb.params;
      r.nf4_stat_bytes = qb.stats;
      r.quantizable_nf4 = qb.quantizable;
      r.layer0_nf4 = qb.layer0;
      if (qb.quantized_layers != r.n_quantized) {
        r.error = "quantize_model returned " + std::to_string(r.n_quantized) + " but " +
                  std::to_string(qb.quantized_layers) + " layers are quantized";
      }

      t0 = std::chrono::steady_clock::now();
      const at::Tensor logits_nf4 = model->forward({ids});
      r.fwd_nf4_ms = peft::bench::ms_since(t0);
      r.logits_err = rel_err(logits_nf4, logits_float);
      r.hwm = peft::bench::read_status_kb("VmHWM");
    } catch (const std::exception& e) {
      r.error = e.what();
    }
  }
  r.done = true;
}

// ---------------------------------------------------------------------------------------------------------
double dbl(int64_t v) { return static_cast<double>(v); }
double ratio(int64_t a, int64_t b) { return dbl(a) / dbl(b); }

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

class QuantReporter : public peft::bench::TimesReporter {
 public:
  // No colour codes when the output goes to a file (the shared reporter ignores --benchmark_color).
  QuantReporter() {
    if (!isatty(fileno(stdout))) output_options_ = OO_Tabular;
  }
  void Finalize() override {
    TimesReporter::Finalize();
    if (g_forward[0].done || g_forward[1].done) print_forward();
    if (g_train[0].done || g_train[1].done) print_train();
    if (g_mem.done) print_memory();
  }

 private:
  static void print_forward() {
    std::printf(
        "\n## 1. Linear forward y = x W^T (float32, no bias), median of %lld interleaved rounds, "
        "ms "
        "(ratio to float32)\n\n",
        static_cast<long long>(g_rounds));
    std::printf("| W (out x in) | tokens |");
    for (int m = 0; m < kMethods; ++m) std::printf(" %s |", kMethodNames[m]);
    std::printf("\n|---|---|");
    for (int m = 0; m < kMethods; ++m) std::printf("---|");
    std::printf("\n");
    for (int s = 0; s < 2; ++s) {
      const ForwardResult& f = g_forward[s];
      if (!f.done) continue;
      for (int t = 0; t < 2; ++t) {
        std::printf("| %s | %lld |", shape_name(kShapes[s]).c_str(),
                    static_cast<long long>(kForwardTokens[t]));
        for (int m = 0; m < kMethods; ++m) {
          if (m == 0) {
            std::printf(" %.2f |", f.ms[t][0]);
          } else {
            std::printf(" %.2f (%.2fx) |", f.ms[t][m], f.ms[t][m] / f.ms[t][0]);
          }
        }
        std::printf("\n");
      }
    }

    std::printf("\n## 1b. Per weight: quantize time, resident bytes, correctness (16 tokens)\n\n");
    std::printf(
        "resident = QuantizedWeight::nbytes() (packed data + statistics + the 16-entry code book + "
        "for "
        "double quant the\nresident float32 absmax the kernel decodes with); payload = "
        "bitsandbytes' "
        "stored tensors (packed, absmax,\nnested_absmax, nested_code, quant_map / CB, SCB).\n"
        "err_kernel = ||linear(x) - x deq(W)^T|| / ||x deq(W)^T||; err_float = ||linear(x) - x "
        "W^T|| / "
        "||x W^T||.\n\n");
    std::printf(
        "| W | method | quantize ms | resident MiB | / float | payload MiB | / float | err_kernel "
        "| "
        "err_float |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < 2; ++s) {
      const ForwardResult& f = g_forward[s];
      if (!f.done) continue;
      for (int m = 0; m < kMethods; ++m) {
        const double fb = static_cast<double>(f.weight_bytes[0]);
        std::printf("| %s | %s | %s | %s | %.4f | %s | %.4f | %s | %s |\n",
                    shape_name(kShapes[s]).c_str(), kMethodNames[m],
                    m == 0 ? "-" : std::to_string(f.quantize_ms[m]).substr(0, 6).c_str(),
                    mib(f.weight_bytes[m]).c_str(), dbl(f.weight_bytes[m]) / fb,
                    mib(f.payload_bytes[m]).c_str(), dbl(f.payload_bytes[m]) / fb,
                    m == 0 ? "-" : fmt_e(f.err_kernel[m]).c_str(),
                    m == 0 ? "-" : fmt_e(f.err_float[m]).c_str());
      }
    }
  }

  static void print_train() {
    std::printf(
        "\n## 2. LoRA r=16 training step (forward + backward to lora_A, lora_B and x; base "
        "frozen), median "
        "of %lld interleaved rounds, ms\n\n",
        static_cast<long long>(g_rounds));
    std::printf(
        "| W (out x in) | tokens | float base | nf4 base | nf4 / float |\n|---|---|---|---|---|\n");
    for (int s = 0; s < 2; ++s) {
      const TrainResult& tr = g_train[s];
      if (!tr.done) continue;
      for (int t = 0; t < 2; ++t) {
        std::printf("| %s | %lld | %.2f | %.2f | %.2fx |\n", shape_name(kShapes[s]).c_str(),
                    static_cast<long long>(kTrainTokens[t]), tr.ms[t][0], tr.ms[t][1],
                    tr.ms[t][1] / tr.ms[t][0]);
      }
    }
    std::printf(
        "\nnf4 LoRA layer vs a float LoRA layer holding the dequantized weight (16 tokens), "
        "relative errors:\n");
    for (int s = 0; s < 2; ++s) {
      const TrainResult& tr = g_train[s];
      if (!tr.done) continue;
      std::printf(
          "  %s: y %s, grad x %s, grad lora_A %s, grad lora_B %s; layer base path vs "
          "QuantizedWeight::linear "
          "%s; LoRA factor dtype %s\n",
          shape_name(kShapes[s]).c_str(), fmt_e(tr.err_y).c_str(), fmt_e(tr.err_gx).c_str(),
          fmt_e(tr.err_gA).c_str(), fmt_e(tr.err_gB).c_str(), fmt_e(tr.err_layer_vs_kernel).c_str(),
          tr.lora_dtype.c_str());
    }
  }

  static void print_memory() {
    const MemoryResult& r = g_mem;
    std::printf(
        "\n## 3. Llama-shaped model (hidden 2048, intermediate 5632, %lld layers, 32/4 heads, "
        "vocab 32000, "
        "float32), NF4 (blocksize 64, no double quant)\n\n",
        static_cast<long long>(g_layers));
    if (!r.error.empty()) std::printf("ERROR: %s\n\n", r.error.c_str());
    std::printf(
        "Bytes = sum over model->parameters() of numel * element_size (a quantized weight is its "
        "packed uint8 "
        "parameter)\n      + for each quantized layer (QuantizedWeight::nbytes() - packed bytes), "
        "i.e. "
        "absmax + code book.\nBuffers (rope) are not counted: %s MiB.\n\n",
        mib(r.buffer_bytes).c_str());
    const int64_t nf4_total = r.nf4_param_bytes + r.nf4_stat_bytes;
    std::printf("| | float32 | NF4 | NF4 / float |\n|---|---|---|---|\n");
    std::printf("| whole model (MiB) | %s | %s (params %s + stats %s) | %.4f |\n",
                mib(r.float_bytes).c_str(), mib(nf4_total).c_str(), mib(r.nf4_param_bytes).c_str(),
                mib(r.nf4_stat_bytes).c_str(), ratio(nf4_total, r.float_bytes));
    std::printf("| the %lld quantized Linear layers (MiB) | %s | %s | %.4f |\n",
                static_cast<long long>(r.n_quantized), mib(r.quantizable_float).c_str(),
                mib(r.quantizable_nf4).c_str(), ratio(r.quantizable_nf4, r.quantizable_float));
    const int64_t rest = r.float_bytes - static_cast<int64_t>(g_layers) * r.layer0_float;
    const int64_t proj_float = rest + 22 * r.layer0_float, proj_nf4 = rest + 22 * r.layer0_nf4;
    std::printf("| projected to 22 layers (TinyLlama-1.1B shape; MiB) | %s | %s | %.4f |\n",
                mib(proj_float).c_str(), mib(proj_nf4).c_str(), ratio(proj_nf4, proj_float));
    std::printf(
        "\n%lld parameters; float part that stays float (embed_tokens + lm_head + final norm): %s "
        "MiB.\n",
        static_cast<long long>(r.n_params), mib(rest).c_str());
    std::printf(
        "Process RSS (VmRSS): before build %.1f MiB, float model %.1f MiB, after NF4 %.1f MiB, "
        "after "
        "malloc_trim %.1f MiB;\n  model delta float %.1f MiB -> nf4 %.1f MiB (%.4f); VmHWM %.1f "
        "MiB.\n",
        dbl(r.rss_start) / 1024.0, dbl(r.rss_float) / 1024.0, dbl(r.rss_nf4) / 1024.0,
        dbl(r.rss_trim) / 1024.0, dbl(r.rss_float - r.rss_start) / 1024.0,
        dbl(r.rss_trim - r.rss_start) / 1024.0,
        ratio(r.rss_trim - r.rss_start, r.rss_float - r.rss_start), dbl(r.hwm) / 1024.0);
    std::printf(
        "Times: build %.0f ms, quantize_model %.0f ms; forward 1 x 8 tokens float %.0f ms, nf4 "
        "%.0f ms; "
        "logits rel. error nf4 vs float %s.\n",
        r.build_ms, r.quantize_ms, r.fwd_float_ms, r.fwd_nf4_ms, fmt_e(r.logits_err).c_str());
  }

  static std::string fmt_e(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2e", v);
    return buf;
  }
};

}  // namespace

int main(int argc, char** argv) {
  peft::bench::read_int_flags(
      argc, argv, {{"rounds", &g_rounds}, {"layers", &g_layers}, {"threads", &g_threads}});
  peft::bench::print_runtime_header(static_cast<int>(g_threads));
  // Registered here so that --rounds sets the iterations (one iteration = one interleaved round).
  for (auto fn : {BM_QuantLinearForward, BM_QuantLoraTrainStep}) {
    benchmark::RegisterBenchmark(
        fn == BM_QuantLinearForward ? "BM_QuantLinearForward" : "BM_QuantLoraTrainStep", fn)
        ->DenseRange(0, 1)
        ->ArgName("shape")
        ->Iterations(g_rounds)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::RegisterBenchmark("BM_QuantModelMemory", BM_QuantModelMemory)
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  QuantReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
