// Arrow routing + GenKnowSub (PEFT tuners/lora/arrow.py): prototypes against an SVD, routing
// against a per-token reference written directly from the formula, GenKnowSub in place and once,
// adapters added / deleted after creation, PEFT's consistency errors and the merge refusal.
#include "peft/arrow.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <thread>

#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "test_util.h"

using peft::ArrowConfig;
using peft::LoraConfig;
using peft::PeftModel;
using peft::test::compare;

namespace {

// The Arrow tests' MLP: lin0 10 -> 16, lin1 16 -> 8.
struct MLP : peft::test::MLP {
  MLP() : peft::test::MLP(10, 16, 8) {}
};

// A model with an Embedding in front (for the Linear-only check).
struct EmbMLPImpl : torch::nn::Module {
  EmbMLPImpl() {
    emb = register_module("emb", peft::nn::Embedding(20, 10));
    lin0 = register_module("lin0", peft::nn::Linear(10, 16));
  }
  peft::nn::Embedding emb{nullptr};
  peft::nn::Linear lin0{nullptr};
};
TORCH_MODULE(EmbMLP);

std::pair<at::Tensor, at::Tensor> factors(const peft::nn::LoraLayerImpl& layer,
                                          const std::string& adapter) {
  return {layer.adapter_tensor(adapter, "lora_A.weight"),
          layer.adapter_tensor(adapter, "lora_B.weight")};
}

// Writes adapters into `layers` with a clear spectral gap: dW = B A = U diag(S) V^T with singular
// values S = (3, 1, 0.5, 0.25, ...) x (1 + seed / 10), so 15 power iterations converge far below
// 1e-4.
void engineer(torch::nn::Module& model, const std::string& adapter, int seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1000 + seed);
  for (auto& [name, layer] : peft::nn::lora_layers(model)) {
    if (!layer->has_adapter(adapter)) continue;
    auto [A, B] = factors(*layer, adapter);
    if (!A.defined()) continue;
    const int64_t r = A.size(0);
    const at::Tensor V = std::get<0>(torch::linalg::qr(torch::randn({A.size(1), r})));
    const at::Tensor U = std::get<0>(torch::linalg::qr(torch::randn({B.size(0), r})));
    at::Tensor S = torch::empty({r});
    for (int64_t i = 0; i < r; ++i)
      S[i] = (i == 0 ? 3.0 : 1.0 / static_cast<double>(1 << (i - 1))) * (1 + seed / 10.0);
    A.copy_(S.unsqueeze(1) * V.t());
    B.copy_(U);
  }
}

LoraConfig adapter_config(int r, double alpha, std::vector<std::string> targets) {
  LoraConfig c;
  c.r = r;
  c.lora_alpha = alpha;
  c.target_modules = std::move(targets);
  c.init_lora_weights.kind = peft::InitLoraWeights::Kind::kFalse;
  return c;
}

// An adapter folder for MLP (or EmbMLP) with engineered factors.
template <class Model = MLP>
std::string save_adapter(const peft::test::TempDir& dir, const std::string& name, int seed,
                         int r = 4, std::vector<std::string> targets = {"lin0", "lin1"}) {
  Model m;
  auto pm =
      peft::get_peft_model(m.ptr(), adapter_config(r, 4.0 * (seed % 3 + 1), std::move(targets)));
  engineer(*m, "default", seed);
  pm->save_pretrained(dir.str(name));
  return dir.str(name);
}

// Independent reference for one layer: prototypes from a full SVD of B A, then, token by token, the
// top_k experts by |t . proto|, softmax of their scores / temperature, and sum coeff_e s_e B_e A_e
// t.
at::Tensor reference_delta(const peft::nn::LoraLayerImpl& layer,
                           const std::vector<std::string>& tasks, const at::Tensor& x, int top_k,
                           double temperature) {
  torch::NoGradGuard no_grad;
  const auto E = static_cast<int64_t>(tasks.size());
  std::vector<at::Tensor> protos, dWs;
  for (const auto& t : tasks) {
    auto [A, B] = factors(layer, t);
    const at::Tensor dW = B.to(torch::kDouble).mm(A.to(torch::kDouble));
    dWs.push_back(dW * layer.scaling(t));
    protos.push_back(std::get<2>(torch::linalg::svd(dW, false, c10::nullopt))[0]);
  }
  const at::Tensor xs = x.to(torch::kDouble).reshape({-1, x.size(-1)});
  at::Tensor out = torch::zeros({xs.size(0), dWs[0].size(0)}, torch::kDouble);
  for (int64_t t = 0; t < xs.size(0); ++t) {
    std::vector<std::pair<double, int64_t>> scored;
    for (int64_t e = 0; e < E; ++e)
      scored.emplace_back(std::abs(xs[t].dot(protos[e]).item<double>()), e);
    std::sort(scored.begin(), scored.end(), [](auto& a, auto& b) { return a.first > b.first; });
    double z = 0;
    for (int k = 0; k < top_k; ++k)
      z += std::exp((scored[k].first - scored[0].first) / temperature);
    for (int k = 0; k < top_k; ++k) {
      const double c = std::exp((scored[k].first - scored[0].first) / temperature) / z;
      out[t] += c * dWs[scored[k].second].mv(xs[t]);
    }
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out.size(1);
  return out.reshape(shape).to(x.scalar_type());
}

at::Tensor base_output(const peft::nn::LoraLayerImpl& layer, const at::Tensor& x) {
  return torch::nn::functional::linear(x, layer.weight(), layer.bias());
}

struct ArrowFixture {
  peft::test::TempDir dir;
  std::vector<std::string> tasks, general;
  ArrowFixture(int n_tasks = 3, int n_general = 0) {
    for (int i = 0; i < n_tasks; ++i)
      tasks.push_back(save_adapter(dir, "ts" + std::to_string(i), i));
    for (int i = 0; i < n_general; ++i)
      general.push_back(save_adapter(dir, "gen" + std::to_string(i), 20 + i));
  }
};

MLP base_mlp() {
  torch::manual_seed(7);
  return MLP();
}

std::vector<std::string> names(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("task_" + std::to_string(i));
  return out;
}

template <class E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception of the expected type>";
}

}  // namespace

TEST(Arrow, CreateLoadsTaskAndGeneralAdaptersAndActivatesTheRouter) {
  ArrowFixture fx(3, 2);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2, .use_gks = true},
                                     fx.general);
  EXPECT_EQ(pm->adapter_names(), (std::vector<std::string>{"task_0", "task_1", "task_2", "gks_0",
                                                           "gks_1", "arrow_router"}));
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"arrow_router"});
  const LoraConfig& rc = pm->peft_config("arrow_router");
  EXPECT_EQ(rc.r, 4);
  ASSERT_TRUE(rc.arrow_config.has_value());
  EXPECT_EQ(rc.arrow_config->top_k, 2);
  EXPECT_EQ(rc.arrow_config->task_adapter_names, names(3));
  EXPECT_EQ(rc.arrow_config->gks_adapter_names, (std::vector<std::string>{"gks_0", "gks_1"}));
  EXPECT_EQ(pm->targeted_module_names("arrow_router"), (std::vector<std::string>{"lin0", "lin1"}));
  for (peft::nn::LoraLayerImpl* layer :
       std::vector<peft::nn::LoraLayerImpl*>{mlp->lin0.get(), mlp->lin1.get()}) {
    auto f = peft::nn::arrow_router(*layer);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->task_adapter_names(), names(3));
    EXPECT_FALSE(f->prototypes().defined());  // lazy
  }
}

TEST(Arrow, PrototypeIsTopRightSingularVectorOfBA) {
  ArrowFixture fx(3);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2});
  torch::NoGradGuard no_grad;
  mlp->forward(torch::randn({4, 10}));
  for (peft::nn::LoraLayerImpl* layer :
       std::vector<peft::nn::LoraLayerImpl*>{mlp->lin0.get(), mlp->lin1.get()}) {
    const at::Tensor protos = peft::nn::arrow_router(*layer)->prototypes();
    ASSERT_TRUE(protos.defined());
    ASSERT_EQ(protos.sizes(), (std::vector<int64_t>{3, layer->in_features()}));
    for (int e = 0; e < 3; ++e) {
      auto [A, B] = factors(*layer, "task_" + std::to_string(e));
      const at::Tensor v =
          std::get<2>(torch::linalg::svd(B.mm(A).to(torch::kDouble), false, c10::nullopt))[0];
      EXPECT_NEAR(protos[e].norm().item<double>(), 1.0, 1e-5);
      EXPECT_NEAR(std::abs(protos[e].to(torch::kDouble).dot(v).item<double>()), 1.0, 1e-4)
          << "expert " << e;
    }
  }
}

TEST(Arrow, PowerIterationIsSeededByRngSeed) {
  torch::manual_seed(3);
  const at::Tensor A = torch::randn({4, 10}), B = torch::randn({6, 4});
  const at::Tensor a = peft::nn::ArrowLinearVariant::top_right_singular_vec_from_BA(A, B, 42, 2);
  const at::Tensor b = peft::nn::ArrowLinearVariant::top_right_singular_vec_from_BA(A, B, 42, 2);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_EQ(a.scalar_type(), torch::kFloat);
}

TEST(Arrow, RoutingEqualsHandComputedReference) {
  ArrowFixture fx(3);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks,
                                     ArrowConfig{.top_k = 2, .router_temperature = 0.7});
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  const at::Tensor x = torch::randn({6, 10});
  const at::Tensor y = mlp->lin0->forward(x);
  const at::Tensor expected =
      base_output(*mlp->lin0, x) + reference_delta(*mlp->lin0, names(3), x, 2, 0.7);
  EXPECT_EQ(compare(y, expected, 1e-4, 1e-4), "");
  // Any leading shape: (2, 3, in) routes each of the 6 tokens the same way.
  EXPECT_EQ(compare(mlp->lin0->forward(x.view({2, 3, 10})), y.view({2, 3, 16}), 1e-6), "");
  // The whole model: lin1 routes its own input.
  const at::Tensor h = torch::relu(y);
  const at::Tensor expected1 =
      base_output(*mlp->lin1, h) + reference_delta(*mlp->lin1, names(3), h, 2, 0.7);
  EXPECT_EQ(compare(mlp->forward(x), expected1, 1e-4, 1e-4), "");
}

TEST(Arrow, TopKOnePicksTheExpertAlignedWithTheToken) {
  ArrowFixture fx(3);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 1});
  torch::NoGradGuard no_grad;
  auto& layer = *mlp->lin0;
  peft::nn::arrow_router(layer)->prepare(layer);
  const at::Tensor protos = peft::nn::arrow_router(layer)->prototypes();
  for (int e = 0; e < 3; ++e) {
    const at::Tensor x = (5.0 * protos[e]).unsqueeze(0);  // sim_e = 5, the others 5 |cos| < 5
    auto [A, B] = factors(layer, "task_" + std::to_string(e));
    const at::Tensor expected =
        base_output(layer, x) + layer.scaling("task_" + std::to_string(e)) * x.mm(A.t()).mm(B.t());
    EXPECT_EQ(compare(layer.forward(x), expected, 1e-5, 1e-5), "") << "expert " << e;
  }
}

TEST(Arrow, AllExpertsWithLargeTemperatureMixUniformly) {
  ArrowFixture fx(3);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks,
                                     ArrowConfig{.top_k = 3, .router_temperature = 1e6});
  torch::NoGradGuard no_grad;
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({4, 10});
  auto& layer = *mlp->lin0;
  at::Tensor mean = torch::zeros({4, 16});
  for (const auto& t : names(3)) {
    auto [A, B] = factors(layer, t);
    mean += layer.scaling(t) * x.mm(A.t()).mm(B.t()) / 3.0;
  }
  EXPECT_EQ(compare(layer.forward(x), base_output(layer, x) + mean, 1e-4, 1e-4), "");
}

TEST(Arrow, GenKnowSubSubtractsTheMeanFactorsInPlaceOnce) {
  ArrowFixture fx(2, 2);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2, .use_gks = true},
                                     fx.general);
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> before;
  for (const auto& n : {"task_0", "task_1", "gks_0", "gks_1"}) {
    auto [A, B] = factors(*mlp->lin0, n);
    before[n] = {A.clone(), B.clone()};
  }
  auto f = peft::nn::arrow_router(*mlp->lin0);
  EXPECT_FALSE(f->gks_done());
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({3, 10});
  mlp->forward(x);
  EXPECT_TRUE(f->gks_done());
  const at::Tensor mean_A = (before["gks_0"].first + before["gks_1"].first) / 2;
  const at::Tensor mean_B = (before["gks_0"].second + before["gks_1"].second) / 2;
  for (const auto& n : {"task_0", "task_1"}) {
    auto [A, B] = factors(*mlp->lin0, n);
    EXPECT_EQ(compare(A, before[n].first - mean_A, 1e-6), "") << n;
    EXPECT_EQ(compare(B, before[n].second - mean_B, 1e-6), "") << n;
  }
  for (const auto& n : {"gks_0", "gks_1"}) {  // the general adapters stay as they are
    EXPECT_TRUE(torch::equal(factors(*mlp->lin0, n).first, before[n].first)) << n;
  }
  // A second forward subtracts nothing more.
  const at::Tensor A0 = factors(*mlp->lin0, "task_0").first.clone();
  const at::Tensor y1 = mlp->forward(x);
  EXPECT_TRUE(torch::equal(factors(*mlp->lin0, "task_0").first, A0));
  EXPECT_TRUE(torch::equal(mlp->forward(x), y1));
  // And the routing runs on the purified factors.
  EXPECT_EQ(compare(mlp->lin0->forward(x),
                    base_output(*mlp->lin0, x) + reference_delta(*mlp->lin0, names(2), x, 2, 1.0),
                    1e-4, 1e-4),
            "");
}

TEST(Arrow, GenKnowSubChangesTheOutput) {
  ArrowFixture fx(3, 1);
  MLP a = base_mlp(), b = base_mlp();
  auto plain = peft::create_arrow_model(a.ptr(), fx.tasks, ArrowConfig{.top_k = 2});
  auto gks = peft::create_arrow_model(b.ptr(), fx.tasks, ArrowConfig{.top_k = 2, .use_gks = true},
                                      fx.general);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({3, 10});
  EXPECT_FALSE(torch::allclose(a->forward(x), b->forward(x)));
}

// PEFT's load-adapter-later tests: a "big" Arrow model over every task adapter of a fixture and a
// "small" one over the first two, both with GenKnowSub over its general adapters.
struct BigAndSmall {
  MLP big_mlp = base_mlp(), small_mlp = base_mlp();
  std::shared_ptr<PeftModel> big, small;
  BigAndSmall(const ArrowFixture& fx, int64_t seed) {
    const ArrowConfig cfg{.top_k = 2, .use_gks = true, .rng_seed = seed};
    big = peft::create_arrow_model(big_mlp.ptr(), fx.tasks, cfg, fx.general);
    small = peft::create_arrow_model(small_mlp.ptr(), {fx.tasks[0], fx.tasks[1]}, cfg, fx.general);
  }
};

// PEFT's test_arrow_gks_with_load_adapter_later_with_forward: a task adapter loaded after the first
// forward gets GenKnowSub once and joins the prototypes, giving what loading all of them at once
// gives.
TEST(Arrow, TaskAdapterLoadedLaterEqualsLoadingAllAtOnce) {
  ArrowFixture fx(3, 1);
  BigAndSmall m(fx, 42);
  auto& [big_mlp, small_mlp, big, small] = m;
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({5, 10});
  small_mlp->forward(x);  // GenKnowSub + prototypes over two experts
  auto f = peft::nn::arrow_router(*small_mlp->lin0);
  EXPECT_EQ(f->prototypes().size(0), 2);

  small->load_adapter(fx.tasks[2], "new_added_ts_expert");
  EXPECT_EQ(f->task_adapter_names(),
            (std::vector<std::string>{"task_0", "task_1", "new_added_ts_expert"}));
  EXPECT_FALSE(f->prototypes().defined());
  small->set_adapter("new_added_ts_expert");  // plain LoRA forward: no GenKnowSub yet
  small_mlp->forward(x);
  small->set_adapter("arrow_router");
  const at::Tensor y_small = small_mlp->forward(x);
  EXPECT_EQ(f->prototypes().size(0), 3);
  EXPECT_EQ(compare(y_small, big_mlp->forward(x), 1e-5, 1e-5), "");
  // The new adapter was purified exactly once, like task_2 of the big model, and the old ones not
  // again.
  for (const auto& [s, b] : std::vector<std::pair<std::string, std::string>>{
           {"new_added_ts_expert", "task_2"}, {"task_0", "task_0"}}) {
    EXPECT_EQ(compare(factors(*small_mlp->lin1, s).first, factors(*big_mlp->lin1, b).first, 1e-6),
              "")
        << s;
    EXPECT_EQ(compare(factors(*small_mlp->lin1, s).second, factors(*big_mlp->lin1, b).second, 1e-6),
              "")
        << s;
  }
}

// Divergence from PEFT: PEFT keeps only the newest addition for GenKnowSub, so the first of two
// adapters loaded between forwards is never purified; here both are, once.
TEST(Arrow, TwoTaskAdaptersLoadedBetweenForwardsAreBothPurifiedOnce) {
  ArrowFixture fx(4, 2);
  BigAndSmall m(fx, 9);
  auto& [big_mlp, small_mlp, big, small] = m;
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({5, 10});
  small_mlp->forward(x);
  small->load_adapter(fx.tasks[2], "task_2");
  small->load_adapter(fx.tasks[3], "task_3");
  EXPECT_EQ(compare(small_mlp->forward(x), big_mlp->forward(x), 1e-5, 1e-5), "");
  for (const auto& n : names(4)) {
    EXPECT_EQ(compare(factors(*small_mlp->lin0, n).first, factors(*big_mlp->lin0, n).first, 1e-6),
              "")
        << n;
  }
}

TEST(Arrow, RouterConfigIsSavedWithItsArrowConfig) {
  ArrowFixture fx(2);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2, .rng_seed = 5});
  peft::test::TempDir out;
  pm->save_pretrained(out.str(), std::vector<std::string>{"arrow_router"});
  const auto json =
      nlohmann::json::parse(peft::test::read_file(out.str("arrow_router/adapter_config.json")));
  EXPECT_EQ(json["arrow_config"]["top_k"], 2);
  EXPECT_EQ(json["arrow_config"]["rng_seed"], 5);
  EXPECT_EQ(json["arrow_config"]["task_adapter_names"], nlohmann::json({"task_0", "task_1"}));
  EXPECT_EQ(json["r"], 4);
  // Loading the saved router next to the same task adapters routes as the original model.
  MLP mlp2 = base_mlp();
  auto loaded = peft::PeftModel::from_pretrained(mlp2.ptr(), fx.tasks[0], "task_0");
  loaded->load_adapter(fx.tasks[1], "task_1");
  loaded->load_adapter(out.str("arrow_router"), "arrow_router");
  loaded->set_adapter("arrow_router");
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({5, 10});
  EXPECT_EQ(compare(mlp2->forward(x), mlp->forward(x), 1e-6, 1e-6), "");
  EXPECT_THROW(loaded->merge_adapter(), peft::UnsupportedError);
}

TEST(Arrow, TaskAdapterLoadedBeforeTheFirstForwardEqualsLoadingAllAtOnce) {
  ArrowFixture fx(3, 1);
  BigAndSmall m(fx, 42);
  auto& [big_mlp, small_mlp, big, small] = m;
  small->load_adapter(fx.tasks[2], "new_added_ts_expert");
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({5, 10});
  EXPECT_EQ(compare(small_mlp->forward(x), big_mlp->forward(x), 1e-5, 1e-5), "");
}

TEST(Arrow, GeneralAdapterLoadedLaterIsNeitherTaskNorMean) {
  ArrowFixture fx(2, 2);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 1}, {});
  pm->load_adapter(fx.general[0], "gks_7");  // PEFT: gks_<digits> names are never task adapters
  EXPECT_EQ(peft::nn::arrow_router(*mlp->lin0)->task_adapter_names(), names(2));
}

// Divergence from PEFT (PEFT's forward fails on the deleted name): deletion refreshes the experts.
TEST(Arrow, DeletingATaskAdapterRebuildsThePrototypes) {
  ArrowFixture fx(3);
  MLP mlp = base_mlp(), two = base_mlp();
  const ArrowConfig cfg{.top_k = 2, .rng_seed = 1};
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, cfg);
  auto pm2 = peft::create_arrow_model(two.ptr(), {fx.tasks[0], fx.tasks[1]}, cfg);
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({5, 10});
  mlp->forward(x);
  pm->delete_adapter("task_2");
  EXPECT_EQ(compare(mlp->forward(x), two->forward(x), 1e-6), "");
  EXPECT_EQ(peft::nn::arrow_router(*mlp->lin0)->prototypes().size(0), 2);
}

TEST(Arrow, RankMismatchIsAConfigError) {
  peft::test::TempDir dir;
  const std::vector<std::string> paths{save_adapter(dir, "r4", 0, 4),
                                       save_adapter(dir, "r8", 1, 8)};
  MLP mlp = base_mlp();
  const std::string msg = error_of<peft::ConfigError>(
      [&] { peft::create_arrow_model(mlp.ptr(), paths, {.top_k = 1}); });
  EXPECT_NE(msg.find("[task_1] rank mismatch: 8 != 4"), std::string::npos) << msg;
}

TEST(Arrow, TargetModuleMismatchIsAConfigError) {
  peft::test::TempDir dir;
  const std::vector<std::string> paths{save_adapter(dir, "both", 0),
                                       save_adapter(dir, "one", 1, 4, {"lin1"})};
  MLP mlp = base_mlp();
  const std::string msg = error_of<peft::ConfigError>(
      [&] { peft::create_arrow_model(mlp.ptr(), paths, {.top_k = 1}); });
  EXPECT_NE(msg.find("[task_1] target_modules mismatch:\n  this adapter -> ['lin1']\n  reference   "
                     "-> ['lin0', "
                     "'lin1']"),
            std::string::npos)
      << msg;
}

TEST(Arrow, NonLinearTargetIsRefused) {
  peft::test::TempDir dir;
  const std::vector<std::string> paths{save_adapter<EmbMLP>(dir, "a", 0, 4, {"emb", "lin0"}),
                                       save_adapter<EmbMLP>(dir, "b", 1, 4, {"emb", "lin0"})};
  EmbMLP m;
  const std::string msg = error_of<peft::UnsupportedError>(
      [&] { peft::create_arrow_model(m.ptr(), paths, {.top_k = 1}); });
  EXPECT_NE(msg.find("LoRA adapters must only target Linear-like layers"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("  - adapter 'task_0' on module 'emb' of type Embedding"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("  - adapter 'task_1' on module 'emb' of type Embedding"), std::string::npos)
      << msg;
}

TEST(Arrow, ArgumentErrors) {
  ArrowFixture fx(1);
  MLP mlp = base_mlp();
  std::string msg = error_of<peft::ConfigError>([&] {
    peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 1, .use_gks = true});
  });
  EXPECT_NE(msg.find("You should provide general LoRA paths if you want to use GenKnowSub."),
            std::string::npos)
      << msg;
  EXPECT_TRUE(
      peft::nn::lora_layers(*mlp)[0].second->adapter_names().empty());  // nothing was loaded
  msg =
      error_of<peft::ConfigError>([&] { peft::create_arrow_model(mlp.ptr(), {}, ArrowConfig{}); });
  EXPECT_NE(msg.find("`task_specific_adapter_paths` should contain at least one adapter path"),
            std::string::npos);
  EXPECT_THROW(peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 0}),
               peft::ConfigError);
  EXPECT_THROW(peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.router_temperature = 0}),
               peft::ConfigError);
  peft::test::TempDir empty;
  msg = error_of<peft::ConfigError>(
      [&] { peft::create_arrow_model(mlp.ptr(), {empty.str()}, ArrowConfig{}); });
  EXPECT_NE(msg.find("does not contain 'adapter_config.json'"), std::string::npos) << msg;
  // top_k above the number of experts fails at the first forward (PEFT: torch.topk).
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 3});
  torch::NoGradGuard no_grad;
  EXPECT_THROW(mlp->forward(torch::randn({2, 10})), peft::ConfigError);
}

TEST(Arrow, MergingTheRouterIsRefused) {
  ArrowFixture fx(2);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2});
  const at::Tensor w0 = mlp->lin0->weight().clone();
  const char* expected = "Cannot merge an active Arrow router adapter. Remove it first.";
  std::string msg = error_of<peft::UnsupportedError>([&] { pm->merge_adapter(); });
  EXPECT_NE(msg.find(expected), std::string::npos) << msg;
  msg = error_of<peft::UnsupportedError>([&] { pm->merge_and_unload(); });
  EXPECT_NE(msg.find(expected), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(mlp->lin0->weight(), w0));
  EXPECT_FALSE(mlp->lin0->merged());
  // A task adapter itself still merges.
  pm->set_adapter("task_0");
  EXPECT_NO_THROW(pm->merge_adapter());
}

TEST(Arrow, AddArrowRouterOnLoadedAdapters) {
  MLP mlp = base_mlp();
  auto pm = peft::get_peft_model(mlp.ptr(), adapter_config(4, 8, {"lin0", "lin1"}), "expert_a");
  pm->add_adapter("expert_b", adapter_config(4, 4, {"lin0", "lin1"}));
  engineer(*mlp, "expert_a", 0);
  engineer(*mlp, "expert_b", 1);
  peft::add_arrow_router(*pm,
                         ArrowConfig{.top_k = 1, .task_adapter_names = {"expert_a", "expert_b"}});
  EXPECT_EQ(pm->active_adapter(), "arrow_router");
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({4, 10});
  EXPECT_EQ(compare(mlp->lin0->forward(x),
                    base_output(*mlp->lin0, x) +
                        reference_delta(*mlp->lin0, {"expert_a", "expert_b"}, x, 1, 1.0),
                    1e-4, 1e-4),
            "");
  EXPECT_THROW(peft::add_arrow_router(*pm, ArrowConfig{.task_adapter_names = {"nope"}}),
               peft::AdapterNotFoundError);
}

TEST(Arrow, ConcurrentFirstForwardsAgree) {
  ArrowFixture fx(3, 1);
  MLP mlp = base_mlp();
  auto pm = peft::create_arrow_model(
      mlp.ptr(), fx.tasks, ArrowConfig{.top_k = 2, .use_gks = true, .rng_seed = 3}, fx.general);
  const at::Tensor x = torch::randn({8, 10});
  std::vector<at::Tensor> outs(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < outs.size(); ++i) {
    threads.emplace_back([&, i] {
      torch::NoGradGuard no_grad;
      outs[i] = mlp->forward(x);
    });
  }
  for (auto& t : threads) t.join();
  torch::NoGradGuard no_grad;
  const at::Tensor once = mlp->forward(x);
  for (const auto& o : outs) EXPECT_EQ(compare(o, once, 0.0), "");
}
