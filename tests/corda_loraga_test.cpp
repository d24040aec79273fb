// The data-driven preprocessing of CorDA (preprocess_corda) and LoRA-GA (preprocess_loraga): what
// they attach to the targeted layers, the init that get_peft_model builds from it, caches, error
// paths and restored state.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/error.h"
#include "peft/init/corda.h"
#include "peft/init/loraga.h"
#include "peft/io/safetensors.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::LoraConfig;
using peft::test::compare;
using peft::test::TempDir;

namespace {

// lin0 6->8, relu, lin1 8->5, GPT-2 Conv1D 5->4 (weight stored (in, out)).
struct NetImpl : torch::nn::Module {
  NetImpl() {
    lin0 = register_module("lin0", peft::nn::Linear(6, 8));
    lin1 = register_module("lin1", peft::nn::Linear(8, 5));
    proj = register_module("proj", peft::nn::Conv1D(4, 5));
  }
  torch::Tensor forward(const torch::Tensor& x) { return proj(lin1(torch::relu(lin0(x)))); }
  peft::nn::Linear lin0{nullptr};
  peft::nn::Linear lin1{nullptr};
  peft::nn::Conv1D proj{nullptr};
};
TORCH_MODULE(Net);

Net make_net() {
  torch::manual_seed(7);
  return Net();
}

LoraConfig make_config(const std::string& init, std::vector<std::string> targets, int r = 2) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = 4;
  c.target_modules = std::move(targets);
  c.init_lora_weights = peft::parse_init_lora_weights(init);
  if (init == "corda") c.corda_config = peft::CordaConfig{};
  if (init == "lora_ga") c.lora_ga_config = peft::LoraGAConfig{};
  return c;
}

// Calibration / training batches: a 2-D batch and a 3-D (batch, seq, in) one.
std::vector<torch::Tensor> batches() {
  torch::manual_seed(11);
  return {torch::randn({16, 6}), torch::randn({2, 9, 6}), torch::randn({12, 6})};
}

std::function<void()> run_forward(Net net) {
  return [net]() mutable {
    for (const auto& x : batches()) net->forward(x);
  };
}

// get_peft_model; its warning that `proj` (Conv1D) forces fan_in_fan_out is expected here.
std::shared_ptr<peft::PeftModel> inject(Net& net, const LoraConfig& config) {
  peft::ScopedWarningCapture quiet;
  return peft::get_peft_model(net.ptr(), config);
}

at::Tensor adapter_tensor(peft::nn::LoraLayerImpl& layer, const std::string& key) {
  for (auto& [k, t] : layer.adapter_tensors("default")) {
    if (k == key) return t.detach().clone();
  }
  return {};
}

// (X / |max X|)^T (X / |max X|) averaged over calls, X = input flattened to rows.
at::Tensor hand_covariance(const std::vector<torch::Tensor>& inputs) {
  at::Tensor sum;
  for (const auto& in : inputs) {
    at::Tensor x = in.reshape({-1, in.size(-1)});
    x = x / x.max().abs();
    at::Tensor c = x.t().mm(x);
    sum = sum.defined() ? sum + c : c;
  }
  return sum / static_cast<double>(inputs.size());
}

// ---------------------------------------------------------------------------------------------------------
// CorDA

TEST(CordaTest, CovarianceMatchesHandComputation) {
  TempDir dir;
  Net net = make_net();
  LoraConfig config = make_config("corda", {"lin0", "lin1"});
  config.corda_config->covariance_file = dir.str("sub/cov.safetensors");
  peft::preprocess_corda(*net, config, run_forward(net));
  auto cov = peft::io::load_safetensors(*config.corda_config->covariance_file);
  ASSERT_EQ(cov.size(), 2u);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> in0 = batches(), in1;
  for (const auto& x : in0) in1.push_back(torch::relu(net->lin0(x)));
  EXPECT_EQ(compare(cov.at("lin0"), hand_covariance(in0), 1e-5), "");
  EXPECT_EQ(compare(cov.at("lin1"), hand_covariance(in1), 1e-5), "");
  // S: singular values of W (C + damp mean(diag C) I), damp doubled from 0.01 until the inverse is
  // accurate.
  at::Tensor C = hand_covariance(in0), eye = torch::eye(6), Cf;
  for (double damp = 0.01;; damp *= 2) {
    Cf = C + eye * (C.diagonal().mean() * damp);
    if (torch::dist(Cf.mm(torch::inverse(Cf)), eye).item<double>() < 0.05) break;
  }
  at::Tensor S =
      std::get<1>(torch::linalg_svd(net->lin0->weight().mm(Cf), /*full_matrices=*/false));
  EXPECT_EQ(compare(net->lin0->init_data().corda->S, S.slice(0, 0, 2), 1e-4), "");
}

TEST(CordaTest, CovarianceDividesByMaxNotAbsMax) {
  // One input with a large negative entry: PEFT divides by |max(x)| = 1, not by max|x| = 10.
  Net net = make_net();
  TempDir dir;
  LoraConfig config = make_config("corda", {"lin0"});
  config.corda_config->covariance_file = dir.str("cov.safetensors");
  at::Tensor x = torch::tensor({{1.0f, -10.0f, 0.5f, 0.0f, 0.25f, 0.0f}});
  peft::preprocess_corda(*net, config, [&] { net->forward(x); });
  at::Tensor cov = peft::io::load_safetensors(*config.corda_config->covariance_file).at("lin0");
  EXPECT_EQ(compare(cov, x.t().mm(x), 1e-6), "");
}

TEST(CordaTest, FullRankDecompositionReconstructsTheWeight) {
  // V = (Vh C^-1)^T, so U diag(S) V^T = W C C^-1 = W when every component is kept.
  Net net = make_net();
  peft::preprocess_corda(*net, make_config("corda", {"lin0", "proj"}, 4), run_forward(net));
  LoraConfig full = make_config("corda", {"lin0"}, 6);
  peft::preprocess_corda(*net, full, run_forward(net));
  at::Tensor U = net->lin0->init_data().corda->U, S = net->lin0->init_data().corda->S;
  at::Tensor V = net->lin0->init_data().corda->V;
  EXPECT_EQ(compare((U * S.unsqueeze(0)).mm(V.t()), net->lin0->weight().detach(), 1e-4), "");
  // Conv1D: the decomposition is of the (out, in) matrix.
  at::Tensor Uc = net->proj->init_data().corda->U, Vc = net->proj->init_data().corda->V;
  EXPECT_EQ(Uc.sizes(), (c10::IntArrayRef{4, 4}));
  EXPECT_EQ(Vc.sizes(), (c10::IntArrayRef{5, 4}));
  at::Tensor Wc = (Uc * net->proj->init_data().corda->S.unsqueeze(0)).mm(Vc.t());
  EXPECT_EQ(compare(Wc, net->proj->weight().detach().t(), 1e-4), "");
}

TEST(CordaTest, IpmKeepsLargestAndKpmSmallestComponents) {
  Net net = make_net();
  peft::preprocess_corda(*net, make_config("corda", {"lin0"}, 6), run_forward(net));
  at::Tensor S_full = net->lin0->init_data().corda->S.clone();
  at::Tensor U_full = net->lin0->init_data().corda->U.clone();
  EXPECT_TRUE((S_full.slice(0, 0, 5) >= S_full.slice(0, 1, 6)).all().item<bool>()) << S_full;

  LoraConfig ipm = make_config("corda", {"lin0"}, 2);
  peft::preprocess_corda(*net, ipm, run_forward(net));
  EXPECT_EQ(compare(net->lin0->init_data().corda->S, S_full.slice(0, 0, 2), 1e-5), "");
  EXPECT_EQ(compare(net->lin0->init_data().corda->U.abs(), U_full.slice(1, 0, 2).abs(), 1e-4), "");

  LoraConfig kpm = ipm;
  kpm.corda_config->corda_method = peft::CordaMethod::kKpm;
  peft::preprocess_corda(*net, kpm, run_forward(net));
  EXPECT_EQ(compare(net->lin0->init_data().corda->S, S_full.slice(0, 4, 6), 1e-5), "");
  EXPECT_EQ(compare(net->lin0->init_data().corda->U.abs(), U_full.slice(1, 4, 6).abs(), 1e-4), "");
}

class CordaMethodTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CordaMethodTest, AdapterKeepsTheBaseOutput) {
  Net net = make_net();
  at::Tensor x = torch::randn({5, 6});
  at::Tensor base = net->forward(x).detach();
  LoraConfig config = make_config("corda", {"lin0", "lin1", "proj"}, 3);
  config.corda_config->corda_method = peft::parse_corda_method(GetParam());
  peft::preprocess_corda(*net, config, run_forward(net));
  auto pm = inject(net, config);
  EXPECT_EQ(compare(net->forward(x).detach(), base, 1e-4), "");
  const std::vector<std::pair<peft::nn::LoraLayerImpl*, std::pair<int64_t, int64_t>>> expect = {
      {net->lin0.get(), {6, 8}}, {net->lin1.get(), {8, 5}}, {net->proj.get(), {5, 4}}};
  for (const auto& [layer, io] : expect) {
    EXPECT_EQ(adapter_tensor(*layer, "lora_A.weight").sizes(), (c10::IntArrayRef{3, io.first}));
    EXPECT_EQ(adapter_tensor(*layer, "lora_B.weight").sizes(), (c10::IntArrayRef{io.second, 3}));
  }
  // The residual weight differs from the original (the kept components moved into the adapter).
  Net fresh = make_net();
  EXPECT_GT((fresh->lin0->weight() - net->lin0->weight()).abs().max().item<double>(), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Methods, CordaMethodTest, ::testing::Values("ipm", "kpm"));

TEST(CordaTest, CacheFileRoundTripGivesIdenticalAdapters) {
  TempDir dir;
  LoraConfig config = make_config("corda", {"lin0", "lin1", "proj"}, 2);
  config.corda_config->cache_file = dir.str("cache/corda.safetensors");
  Net a = make_net();
  peft::preprocess_corda(*a, config, run_forward(a));
  ASSERT_TRUE(std::filesystem::exists(*config.corda_config->cache_file));
  peft::io::SafetensorsFile file(*config.corda_config->cache_file);
  EXPECT_TRUE(file.contains("lin0.eigens.S_WC") && file.contains("proj.eigens.U_WC") &&
              file.contains("lin1.eigens.V_WC"));
  auto pa = inject(a, config);

  Net b = make_net();
  peft::preprocess_corda(*b, config);  // no run_model: everything comes from the cache
  auto pb = inject(b, config);
  for (const auto& [la, lb] :
       std::vector<std::pair<peft::nn::LoraLayerImpl*, peft::nn::LoraLayerImpl*>>{
           {a->lin0.get(), b->lin0.get()},
           {a->lin1.get(), b->lin1.get()},
           {a->proj.get(), b->proj.get()}}) {
    EXPECT_TRUE(adapter_tensor(*la, "lora_A.weight").equal(adapter_tensor(*lb, "lora_A.weight")));
    EXPECT_TRUE(adapter_tensor(*la, "lora_B.weight").equal(adapter_tensor(*lb, "lora_B.weight")));
    EXPECT_TRUE(la->weight().equal(lb->weight()));
  }
}

TEST(CordaTest, CacheForAnotherRankIsRejected) {
  TempDir dir;
  LoraConfig config = make_config("corda", {"lin0"}, 2);
  config.corda_config->cache_file = dir.str("corda.safetensors");
  Net net = make_net();
  peft::preprocess_corda(*net, config, run_forward(net));
  config.r = 3;
  EXPECT_THROW(peft::preprocess_corda(*net, config), peft::FormatError);
}

TEST(CordaTest, CovarianceFileIsReusedWithoutRunModel) {
  TempDir dir;
  LoraConfig config = make_config("corda", {"lin0"}, 2);
  config.corda_config->covariance_file = dir.str("cov.safetensors");
  Net net = make_net();
  peft::preprocess_corda(*net, config, run_forward(net));
  at::Tensor S = net->lin0->init_data().corda->S.clone();
  net->lin0->init_data() = {};
  peft::preprocess_corda(*net, config);
  EXPECT_EQ(compare(net->lin0->init_data().corda->S, S, 1e-6), "");
}

TEST(CordaTest, MissingRunModelIsAConfigError) {
  Net net = make_net();
  try {
    peft::preprocess_corda(*net, make_config("corda", {"lin0"}));
    FAIL() << "expected ConfigError";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("run_model"), std::string::npos) << e.what();
  }
}

TEST(CordaTest, RankAboveMinDimensionIsAConfigError) {
  Net net = make_net();
  bool ran = false;
  EXPECT_THROW(peft::preprocess_corda(*net, make_config("corda", {"lin1"}, 6), [&] { ran = true; }),
               peft::ConfigError);
  EXPECT_FALSE(ran);  // rejected before the calibration runs
}

TEST(CordaTest, UnreachedLayerIsNamedAndStateIsRestored) {
  Net net = make_net();
  net->train();
  try {
    peft::preprocess_corda(*net, make_config("corda", {"lin0", "lin1"}), [&] {
      net->lin0(torch::randn({4, 6}));
    });
    FAIL() << "expected peft::Error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"lin1\""), std::string::npos) << e.what();
  }
  EXPECT_TRUE(net->is_training());
  EXPECT_TRUE(net->lin0->is_training());
}

TEST(CordaTest, ObserversAreRemovedWhenRunModelThrows) {
  Net net = make_net();
  net->train();
  EXPECT_THROW(
      peft::preprocess_corda(*net, make_config("corda", {"lin0"}),
                             [&] {
                               EXPECT_FALSE(net->is_training());  // calibration runs in eval mode
                               EXPECT_FALSE(torch::GradMode::is_enabled());
                               throw std::runtime_error("user failure");
                             }),
      std::runtime_error);
  EXPECT_TRUE(net->is_training());
  // An all-zero input would make a left-over observer throw (division by max = 0).
  EXPECT_NO_THROW(net->forward(torch::zeros({2, 6})));
  // A zero input during calibration is reported as invalid data.
  EXPECT_THROW(peft::preprocess_corda(*net, make_config("corda", {"lin0"}),
                                      [&] {
                                        net->forward(torch::zeros({2, 6}));
                                      }),
               peft::Error);
  EXPECT_NO_THROW(net->forward(torch::zeros({2, 6})));
}

// ---------------------------------------------------------------------------------------------------------
// LoRA-GA

at::Tensor loss_of(Net& net, const torch::Tensor& x) { return net->forward(x).pow(2).mean(); }

// Each batch's gradient by hand (torch::autograd::grad, so nothing accumulates), averaged.
std::vector<at::Tensor> hand_mean_gradients(Net& net) {
  std::vector<at::Tensor> weights = {net->lin0->weight(), net->lin1->weight(), net->proj->weight()};
  std::vector<at::Tensor> sums(3);
  const auto xs = batches();
  for (const auto& x : xs) {
    auto grads = torch::autograd::grad({loss_of(net, x)}, weights);
    for (size_t i = 0; i < 3; ++i) sums[i] = sums[i].defined() ? sums[i] + grads[i] : grads[i];
  }
  for (auto& s : sums) s = s / static_cast<double>(xs.size());
  return sums;
}

std::function<void()> train_steps(Net net) {
  return [net]() mutable {
    for (const auto& x : batches()) {
      net->zero_grad();
      loss_of(net, x).backward();
    }
  };
}

TEST(LoraGaTest, StoredGradientIsTheMeanOverSteps) {
  Net net = make_net();
  const auto expected = hand_mean_gradients(net);
  peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0", "lin1", "proj"}), train_steps(net));
  EXPECT_EQ(compare(net->lin0->init_data().loraga_grad, expected[0], 1e-6), "");
  EXPECT_EQ(compare(net->lin1->init_data().loraga_grad, expected[1], 1e-6), "");
  // Conv1D: the gradient keeps the stored (in, out) layout.
  EXPECT_EQ(net->proj->init_data().loraga_grad.sizes(), (c10::IntArrayRef{5, 4}));
  EXPECT_EQ(compare(net->proj->init_data().loraga_grad, expected[2], 1e-6), "");
}

TEST(LoraGaTest, RequiresGradTrainingFlagAndGradAreRestored) {
  Net net = make_net();
  net->eval();
  net->lin0->bias().set_requires_grad(false);
  net->lin1->weight().set_requires_grad(false);
  std::vector<std::pair<at::Tensor, bool>> before;
  for (const auto& p : net->parameters()) before.emplace_back(p, p.requires_grad());
  bool saw_training = false, saw_only_targets = true;
  peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0", "lin1"}), [&] {
    saw_training = net->is_training() && net->lin1->is_training();
    for (const auto& item : net->named_parameters()) {
      const bool target = item.key() == "lin0.weight" || item.key() == "lin1.weight";
      saw_only_targets = saw_only_targets && item.value().requires_grad() == target;
    }
    train_steps(net)();
  });
  EXPECT_TRUE(saw_training);
  EXPECT_TRUE(saw_only_targets);
  EXPECT_FALSE(net->is_training());
  EXPECT_FALSE(net->lin0->is_training());
  for (const auto& [p, flag] : before) EXPECT_EQ(p.requires_grad(), flag);
  EXPECT_FALSE(net->lin0->weight().grad().defined());
  EXPECT_FALSE(net->lin1->weight().grad().defined());
}

TEST(LoraGaTest, ArB2rAlignsWithTheGradientAndKeepsTheOutput) {
  Net net = make_net();
  at::Tensor x = torch::randn({5, 6});
  at::Tensor base = net->forward(x).detach();
  const int r = 2;
  LoraConfig config = make_config("lora_ga", {"lin0"}, r);
  config.lora_ga_config->scale = peft::LoraGAScale::kUnit;
  peft::preprocess_loraga(*net, config, train_steps(net));
  at::Tensor G = net->lin0->init_data().loraga_grad.clone();  // (8, 6)
  auto pm = inject(net, config);
  EXPECT_EQ(compare(net->forward(x).detach(), base, 1e-4), "");

  auto [U, S, Vh] = torch::linalg_svd(G, /*full_matrices=*/false);
  at::Tensor A = adapter_tensor(*net->lin0, "lora_A.weight");  // (r, 6)
  at::Tensor B = adapter_tensor(*net->lin0, "lora_B.weight");  // (8, r)
  // A's rows: orthonormal, inside the span of the top-r right singular vectors.
  EXPECT_EQ(compare(A.mm(A.t()), torch::eye(r), 1e-4), "");
  at::Tensor Vr = Vh.slice(0, 0, r);
  EXPECT_EQ(compare(A.mm(Vr.t()).mm(Vr), A, 1e-4), "");
  // B's columns: U[:, r:2r] scaled by S[r:2r] (unit scale), orthogonal to the top-r left singular
  // vectors.
  EXPECT_EQ(compare(U.slice(1, 0, r).t().mm(B), torch::zeros({r, r}), 1e-4), "");
  at::Tensor Un = U.slice(1, r, 2 * r);
  EXPECT_EQ(compare(Un.mm(Un.t()).mm(B), B, 1e-4), "");
  EXPECT_EQ(compare(B.norm(2, {0}), S.slice(0, r, 2 * r), 1e-4), "");
}

struct GaCase {
  std::string direction, scale;
};

class LoraGaOptionsTest : public ::testing::TestWithParam<GaCase> {};

TEST_P(LoraGaOptionsTest, RunsWithRightShapesAndKeepsTheOutput) {
  Net net = make_net();
  at::Tensor x = torch::randn({5, 6});
  at::Tensor base = net->forward(x).detach();
  LoraConfig config = make_config("lora_ga", {"lin0", "lin1", "proj"}, 2);
  config.lora_ga_config->direction = peft::parse_lora_ga_direction(GetParam().direction);
  config.lora_ga_config->scale = peft::parse_lora_ga_scale(GetParam().scale);
  peft::preprocess_loraga(*net, config, train_steps(net));
  auto pm = inject(net, config);
  EXPECT_EQ(compare(net->forward(x).detach(), base, 1e-4), "");
  EXPECT_EQ(adapter_tensor(*net->lin0, "lora_A.weight").sizes(), (c10::IntArrayRef{2, 6}));
  EXPECT_EQ(adapter_tensor(*net->lin0, "lora_B.weight").sizes(), (c10::IntArrayRef{8, 2}));
  EXPECT_EQ(adapter_tensor(*net->proj, "lora_A.weight").sizes(), (c10::IntArrayRef{2, 5}));
  EXPECT_EQ(adapter_tensor(*net->proj, "lora_B.weight").sizes(), (c10::IntArrayRef{4, 2}));
  EXPECT_GT(adapter_tensor(*net->lin1, "lora_B.weight").abs().max().item<double>(), 0.0);
}

std::vector<GaCase> all_cases() {
  std::vector<GaCase> out;
  for (const char* d : {"ArB2r", "A2rBr", "ArBr", "random"}) {
    for (const char* s : {"stable", "weight_svd", "gd_scale", "unit"}) out.push_back({d, s});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, LoraGaOptionsTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<GaCase>& param_info) {
                           return param_info.param.direction + "_" + param_info.param.scale;
                         });

TEST(LoraGaTest, CacheRoundTripGivesIdenticalGradientsAndAdapters) {
  TempDir dir;
  const std::string cache = dir.str("ga/grads.safetensors");
  LoraConfig config = make_config("lora_ga", {"lin0", "proj"}, 2);
  Net a = make_net();
  peft::preprocess_loraga(*a, config, train_steps(a), cache);
  peft::io::SafetensorsFile file(cache);
  EXPECT_TRUE(file.contains("lin0._peft_loraga_grad") && file.contains("proj._peft_loraga_grad"));
  Net b = make_net();
  peft::preprocess_loraga(*b, config, {}, cache);
  EXPECT_TRUE(a->lin0->init_data().loraga_grad.equal(b->lin0->init_data().loraga_grad));
  EXPECT_TRUE(a->proj->init_data().loraga_grad.equal(b->proj->init_data().loraga_grad));
  torch::manual_seed(3);  // svd_lowrank draws random numbers
  auto pa = inject(a, config);
  torch::manual_seed(3);
  auto pb = inject(b, config);
  EXPECT_TRUE(
      adapter_tensor(*a->lin0, "lora_A.weight").equal(adapter_tensor(*b->lin0, "lora_A.weight")));
  EXPECT_TRUE(
      adapter_tensor(*a->proj, "lora_B.weight").equal(adapter_tensor(*b->proj, "lora_B.weight")));
  EXPECT_TRUE(a->lin0->weight().equal(b->lin0->weight()));
}

TEST(LoraGaTest, MissingCallbackOrConfigIsAConfigError) {
  Net net = make_net();
  EXPECT_THROW(peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0"})), peft::ConfigError);
  LoraConfig no_ga = make_config("lora_ga", {"lin0"});
  no_ga.lora_ga_config.reset();
  EXPECT_THROW(peft::preprocess_loraga(*net, no_ga, train_steps(net)), peft::ConfigError);
}

TEST(LoraGaTest, LayerWithoutGradientIsNamedAndStateIsRestored) {
  Net net = make_net();
  net->eval();
  try {
    peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0", "lin1"}), [&] {
      net->lin0(torch::randn({3, 6})).sum().backward();
    });
    FAIL() << "expected peft::Error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"lin1\""), std::string::npos) << e.what();
  }
  EXPECT_FALSE(net->is_training());
  for (const auto& p : net->parameters()) EXPECT_TRUE(p.requires_grad());
  EXPECT_FALSE(net->lin0->weight().grad().defined());
  EXPECT_FALSE(net->lin0->init_data().loraga_grad.defined());
}

TEST(LoraGaTest, ThrowingCallbackRestoresStateAndRemovesHooks) {
  Net net = make_net();
  EXPECT_THROW(peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0"}),
                                       [&] {
                                         loss_of(net, torch::randn({3, 6})).backward();
                                         throw std::runtime_error("user failure");
                                       }),
               std::runtime_error);
  for (const auto& p : net->parameters()) EXPECT_TRUE(p.requires_grad());
  EXPECT_FALSE(net->lin0->weight().grad().defined());
  // A later run starts from scratch: only its own gradients count.
  const auto expected = hand_mean_gradients(net);
  peft::preprocess_loraga(*net, make_config("lora_ga", {"lin0"}), train_steps(net));
  EXPECT_EQ(compare(net->lin0->init_data().loraga_grad, expected[0], 1e-6), "");
}

}  // namespace
