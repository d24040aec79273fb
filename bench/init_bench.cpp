// PiSSA initialisation of one 4096 x 4096 Linear (r = 16): full SVD ("pissa") against the
// randomized subspace iteration ("pissa_niter_4", "pissa_niter_16"), timed in the same process,
// with the relative error of each fast variant's rank-r approximation against the full SVD's (||W -
// s B A||_F / ||W - s B A||_F(full) - 1).
//   build-release/bench/init_bench [--dim=N]
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdio>
#include <map>

#include "bench_util.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"

namespace {

int64_t g_dim = 4096;
const int kNiter[] = {0, 4, 16};
std::map<int, double> g_residual_norm;  // niter -> ||W_residual||_F

struct Holder : torch::nn::Module {
  Holder() { proj = register_module("proj", peft::nn::Linear(g_dim, g_dim, false)); }
  peft::nn::Linear proj{nullptr};
};

void BM_PissaInit(benchmark::State& state) {
  const int niter = kNiter[state.range(0)];
  torch::manual_seed(0);
  auto model = std::make_shared<Holder>();
  // A weight with a decaying spectrum, like trained weights (a pure Gaussian matrix has a flat
  // one).
  {
    torch::NoGradGuard no_grad;
    at::Tensor u = std::get<0>(at::linalg_qr(torch::randn({g_dim, g_dim})));
    at::Tensor s = at::pow(at::arange(1, g_dim + 1, at::kFloat), -0.5);
    model->proj->weight().copy_(
        at::matmul(u * s, std::get<0>(at::linalg_qr(torch::randn({g_dim, g_dim})))));
  }
  const at::Tensor original = model->proj->weight().clone();
  peft::LoraConfig c;
  c.r = 16;
  c.lora_alpha = 16;
  c.target_modules = std::vector<std::string>{"proj"};
  c.init_lora_weights = niter == 0
                            ? peft::parse_init_lora_weights("pissa")
                            : peft::parse_init_lora_weights("pissa_niter_" + std::to_string(niter));
  for (auto _ : state) {
    state.PauseTiming();
    {
      torch::NoGradGuard no_grad;
      model->proj->weight().copy_(original);
    }
    state.ResumeTiming();
    auto pm = peft::get_peft_model(model, c);
    state.PauseTiming();
    g_residual_norm[niter] =
        at::linalg_matrix_norm(model->proj->weight().detach(), "fro").item<double>();
    pm->unload();
    state.ResumeTiming();
  }
  state.SetLabel(niter == 0 ? "pissa (full SVD)" : "pissa_niter_" + std::to_string(niter));
}

BENCHMARK(BM_PissaInit)
    ->DenseRange(0, 2)
    ->ArgName("variant")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1)
    ->UseRealTime();

class InitReporter : public peft::bench::TimesReporter {
 public:
  void Finalize() override {
    TimesReporter::Finalize();
    const double full = time("BM_PissaInit/variant:0");
    std::printf("\nPiSSA init of a %lld x %lld Linear, r = 16:\n", static_cast<long long>(g_dim),
                static_cast<long long>(g_dim));
    for (int v = 0; v < 3; ++v) {
      const double t = time("BM_PissaInit/variant:" + std::to_string(v));
      if (t <= 0) continue;
      const int n = kNiter[v];
      const double err = g_residual_norm.count(0) && g_residual_norm.count(n)
                             ? g_residual_norm.at(n) / g_residual_norm.at(0) - 1.0
                             : 0.0;
      std::printf("  %-18s %10.1f ms  time/full %.3f  residual norm vs full SVD %+.2e\n",
                  n == 0 ? "full SVD" : ("niter " + std::to_string(n)).c_str(), t,
                  full > 0 ? t / full : 0.0, err);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  InitReporter reporter;
  return peft::bench::run_benchmarks(argc, argv, "dim", g_dim, reporter);
}
