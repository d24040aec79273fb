// Process-wide runtime settings: bfloat16 autocast scopes and the thread plan.
#include "peft/runtime.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"

TEST(Bf16Autocast, RunsMatrixProductsInBfloat16InsideTheScopeOnly) {
  const auto x = torch::randn({4, 8});
  const auto w = torch::randn({3, 8});
  EXPECT_EQ(torch::nn::functional::linear(x, w).scalar_type(), at::kFloat);
  {
    peft::Bf16Autocast outer;
    EXPECT_EQ(torch::nn::functional::linear(x, w).scalar_type(), at::kBFloat16);
    EXPECT_EQ(torch::matmul(x, w.t()).scalar_type(), at::kBFloat16);
    {
      peft::Bf16Autocast off(false);  // a disabled guard leaves the enclosing scope as it is
      EXPECT_EQ(torch::mm(x, w.t()).scalar_type(), at::kBFloat16);
    }
    {
      peft::Bf16Autocast nested;
      EXPECT_EQ(torch::mm(x, w.t()).scalar_type(), at::kBFloat16);
    }
    EXPECT_EQ(torch::mm(x, w.t()).scalar_type(), at::kBFloat16);  // the nested exit kept it on
  }
  EXPECT_EQ(torch::mm(x, w.t()).scalar_type(), at::kFloat);
  {
    peft::Bf16Autocast off(false);
    EXPECT_EQ(torch::mm(x, w.t()).scalar_type(), at::kFloat);
  }
}

TEST(Bf16Autocast, GradientsOfFloat32ParametersStayFloat32) {
  auto w = torch::randn({3, 8}, torch::requires_grad());
  const auto x = torch::randn({4, 8});
  at::Tensor y;
  {
    peft::Bf16Autocast autocast;
    y = torch::nn::functional::linear(x, w).sum();
  }
  y.backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().scalar_type(), at::kFloat);
  EXPECT_TRUE(torch::allclose(w.grad(), x.sum(0).expand({3, 8}), 1e-2, 5e-2));
}

namespace {

peft::ThreadEnvironment machine(int cores, peft::BlasThreading blas) {
  peft::ThreadEnvironment env;
  env.physical_cores = cores;
  env.libtorch_threads = 1;
  env.blas = blas;
  return env;
}

}  // namespace

TEST(ThreadPlan, OneOpenMpPoolOfOneThreadPerPhysicalCoreWithAnOpenMpBlas) {
  for (auto blas : {peft::BlasThreading::kOpenMP, peft::BlasThreading::kSequential,
                    peft::BlasThreading::kUnknown}) {
    const auto plan = peft::plan_threads(machine(8, blas));
    EXPECT_EQ(plan.intra_op, 8);
    EXPECT_EQ(plan.blas, 0);  // no second pool to size
    EXPECT_FALSE(plan.reason.empty());
  }
}

TEST(ThreadPlan, APthreadOpenBlasGetsTheCoresAndLibTorchOneThreadUnlessBf16) {
  auto env = machine(8, peft::BlasThreading::kPthreads);
  auto plan = peft::plan_threads(env);
  EXPECT_EQ(plan.intra_op, 1);
  EXPECT_EQ(plan.blas, 8);
  env.low_precision = true;  // oneDNN's bf16 GEMMs run on the OpenMP pool
  plan = peft::plan_threads(env);
  EXPECT_EQ(plan.intra_op, 8);
  EXPECT_EQ(plan.blas, 8);
  env.openblas_num_threads_set = true;  // the user's OPENBLAS_NUM_THREADS stands
  EXPECT_EQ(peft::plan_threads(env).blas, 0);
}

TEST(ThreadPlan, OmpNumThreadsSetsLibTorchOnlyAndRequestedThreadsSetBothPools) {
  auto env = machine(4, peft::BlasThreading::kPthreads);
  env.omp_num_threads_set = true;
  env.libtorch_threads = 1;  // OMP_NUM_THREADS=1 as LibTorch read it
  auto plan = peft::plan_threads(env);
  EXPECT_EQ(plan.intra_op, 1);
  EXPECT_EQ(plan.blas, 4);  // OpenBLAS no longer falls back to OMP_NUM_THREADS=1
  env.requested = 3;
  plan = peft::plan_threads(env);
  EXPECT_EQ(plan.intra_op, 3);
  EXPECT_EQ(plan.blas, 3);
  env.blas = peft::BlasThreading::kOpenMP;
  plan = peft::plan_threads(env);
  EXPECT_EQ(plan.intra_op, 3);
  EXPECT_EQ(plan.blas, 0);
}

TEST(ThreadPlan, ACgroupCpuQuotaCapsTheCores) {
  EXPECT_EQ(peft::cpu_quota_cpus(200000, 100000), 2);  // docker --cpus=2
  EXPECT_EQ(peft::cpu_quota_cpus(150000, 100000), 2);  // 1.5 CPUs: round up
  EXPECT_EQ(peft::cpu_quota_cpus(50000, 100000), 1);
  EXPECT_EQ(peft::cpu_quota_cpus(-1, 100000), 0);  // cgroup v1: no quota
  EXPECT_EQ(peft::cpu_quota_cpus(100000, 0), 0);
  EXPECT_EQ(peft::cpu_quota_cpus(1LL << 60, 1), peft::kMaxThreads);
}

TEST(ThreadPlan, ConfigureAppliesThePlanOnThisMachine) {
  EXPECT_GE(peft::physical_cores(), 1);
  const int before = at::get_num_threads();
  const auto plan = peft::configure_threads(2);
  EXPECT_EQ(plan.intra_op, 2);
  EXPECT_EQ(at::get_num_threads(), 2);
  EXPECT_THROW(peft::configure_threads(peft::kMaxThreads + 1), peft::ConfigError);
  peft::configure_threads(before);
  EXPECT_EQ(at::get_num_threads(), before);
}
