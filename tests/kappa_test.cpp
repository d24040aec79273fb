// KappaTune: weights built with chosen singular values get the expected kappa and rank; PEFT's
// selection priority (num_modules > top_p > threshold > all) and top_p rounding; only Linear layers
// and 3-D parameters with a MoE suffix are candidates; oversized matrices are skipped; the `inspect
// --kappa` verb.
#include "peft/kappa.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "test_util.h"

namespace {

using Names = std::vector<std::string>;

const peft::KappaOptions kQuiet{.show_progress = false};

// (out, in) = U diag(s) V^T with random orthonormal U, V: singular values exactly s (descending or
// not).
torch::Tensor with_singular_values(int64_t out, int64_t in, const std::vector<double>& s) {
  const int64_t k = std::min(out, in);
  EXPECT_EQ(static_cast<int64_t>(s.size()), k);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto U = std::get<0>(torch::linalg_qr(torch::randn({out, k}, opts)));
  auto V = std::get<0>(torch::linalg_qr(torch::randn({in, k}, opts)));
  return U.matmul(torch::diag(torch::tensor(s, opts))).matmul(V.t()).to(torch::kFloat32);
}

// n values from kappa down to 1 (geometric), so sigma_max / sigma_min = kappa.
std::vector<double> spectrum(int64_t n, double kappa) {
  std::vector<double> s;
  for (int64_t i = 0; i < n; ++i)
    s.push_back(std::pow(kappa, 1.0 - static_cast<double>(i) / static_cast<double>(n - 1)));
  return s;
}

void set_weight(peft::nn::LoraLayerImpl& layer, const torch::Tensor& w) {
  torch::NoGradGuard ng;
  layer.weight().copy_(w);
}

// "block.{hi,mid,lo}" with kappa 100, 10, 1 (model order is the reverse of kappa order) and "head"
// with 30.
struct RankNetImpl : torch::nn::Module {
  RankNetImpl() {
    block = register_module("block", std::make_shared<torch::nn::Module>());
    hi = block->register_module("hi", peft::nn::Linear(8, 6, /*bias=*/true));
    mid = block->register_module("mid", peft::nn::Linear(6, 8, /*bias=*/false));
    lo = block->register_module("lo", peft::nn::Linear(6, 6, /*bias=*/false));
    head = register_module("head", peft::nn::Linear(6, 10, /*bias=*/false));
    set_weight(*hi, with_singular_values(6, 8, spectrum(6, 100.0)));
    set_weight(*mid, with_singular_values(8, 6, spectrum(6, 10.0)));
    set_weight(*lo, with_singular_values(6, 6, spectrum(6, 1.0)));
    set_weight(*head, with_singular_values(10, 6, spectrum(6, 30.0)));
  }
  std::shared_ptr<torch::nn::Module> block;
  peft::nn::Linear hi{nullptr}, mid{nullptr}, lo{nullptr}, head{nullptr};
};
TORCH_MODULE(RankNet);

void expect_rel(double actual, double expected, double rel = 1e-3) {
  EXPECT_LE(std::abs(actual - expected), rel * expected) << actual << " vs " << expected;
}

TEST(KappaTune, KnownConditionNumbersAreRankedLowestFirst) {
  torch::manual_seed(0);
  RankNet net;
  peft::KappaTuneSelector sel(*net, kQuiet);
  ASSERT_EQ(sel.scores().size(), 4u);
  const Names order = {"block.lo", "block.mid", "head", "block.hi"};
  const std::vector<double> kappas = {1.0, 10.0, 30.0, 100.0};
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(sel.scores()[i].name, order[i]);
    EXPECT_FALSE(sel.scores()[i].is_parameter);
    expect_rel(sel.scores()[i].kappa, kappas[i]);
  }
  expect_rel(*sel.kappa("block.mid"), 10.0);
  EXPECT_FALSE(sel.kappa("block").has_value());
  EXPECT_EQ(sel.get_best_targets(), order);
  EXPECT_EQ(sel.get_best_target_parameters(), Names{});
}

TEST(KappaTune, SelectionPriorityIsNumModulesThenTopPThenThreshold) {
  torch::manual_seed(1);
  RankNet net;
  peft::KappaTuneSelector sel(*net, kQuiet);
  // num_modules wins over top_p and threshold.
  EXPECT_EQ(sel.get_best_targets(1.0, 2, 5.0), (Names{"block.lo", "block.mid"}));
  EXPECT_EQ(sel.get_best_targets(std::nullopt, 10),
            (Names{"block.lo", "block.mid", "head", "block.hi"}));
  EXPECT_EQ(sel.get_best_targets(std::nullopt, 0), Names{});
  // A negative k is a Python slice end: all but the last |k|.
  EXPECT_EQ(sel.get_best_targets(std::nullopt, -1), (Names{"block.lo", "block.mid", "head"}));
  EXPECT_EQ(sel.get_best_targets(std::nullopt, -9), Names{});
  // top_p wins over threshold.
  EXPECT_EQ(sel.get_best_targets(0.75, std::nullopt, 1000.0),
            (Names{"block.lo", "block.mid", "head"}));
  // threshold: kappa <= threshold.
  EXPECT_EQ(sel.get_best_targets(std::nullopt, std::nullopt, 50.0),
            (Names{"block.lo", "block.mid", "head"}));
  EXPECT_EQ(sel.get_best_targets(std::nullopt, std::nullopt, 0.5), Names{});
  EXPECT_EQ(
      sel.get_best_targets(std::nullopt, std::nullopt, std::numeric_limits<double>::quiet_NaN()),
      Names{});
  // Nothing: all, sorted.
  EXPECT_EQ(sel.get_best_targets().size(), 4u);
}

TEST(KappaTune, TopPTakesMaxOneIntOfNTimesTopP) {
  torch::manual_seed(2);
  RankNet net;
  peft::KappaTuneSelector sel(*net, kQuiet);
  const auto k = [&](double p) { return sel.get_best_targets(p).size(); };
  EXPECT_EQ(k(0.2), 1u);   // int(0.8) = 0 -> 1
  EXPECT_EQ(k(0.49), 1u);  // int(1.96) = 1 (truncation, not rounding)
  EXPECT_EQ(k(0.5), 2u);
  EXPECT_EQ(k(0.74), 2u);  // int(2.96) = 2
  EXPECT_EQ(k(0.75), 3u);
  EXPECT_EQ(k(1.0), 4u);
  EXPECT_EQ(k(7.5), 4u);
  EXPECT_EQ(k(0.0), 1u);
  EXPECT_EQ(k(-3.0), 1u);
  EXPECT_EQ(sel.get_best_targets(0.5), (Names{"block.lo", "block.mid"}));
  EXPECT_THROW(sel.get_best_targets(std::numeric_limits<double>::quiet_NaN()), peft::ConfigError);
  EXPECT_THROW(sel.get_best_targets(std::numeric_limits<double>::infinity()), peft::ConfigError);
}

TEST(KappaTune, EqualKappasKeepModelOrder) {
  auto root = std::make_shared<torch::nn::Module>();
  for (const char* name : {"z", "a", "m"}) {
    auto lin = root->register_module(name, peft::nn::Linear(4, 4, false));
    set_weight(*lin, torch::eye(4) * 3.0);
  }
  peft::KappaTuneSelector sel(*root, kQuiet);
  EXPECT_EQ(sel.get_best_targets(), (Names{"z", "a", "m"}));
  expect_rel(sel.scores()[0].kappa, 1.0);
}

// Conv1D (GPT-2) and Embedding are not nn.Linear in PEFT: never candidates. A tied output head is.
TEST(KappaTune, OnlyLinearLayersAreCandidates) {
  torch::manual_seed(3);
  auto root = std::make_shared<torch::nn::Module>();
  auto emb = root->register_module("embed_tokens", peft::nn::Embedding(12, 4));
  root->register_module("c_attn", peft::nn::Conv1D(6, 4));
  root->register_module("proj", peft::nn::Linear(4, 4));
  root->register_module("lm_head", peft::nn::Linear(emb->weight()));
  root->register_module("plain", torch::nn::Linear(4, 4));  // not adapter-ready
  peft::KappaTuneSelector sel(*root, kQuiet);
  Names names;
  for (const auto& s : sel.scores()) names.push_back(s.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (Names{"lm_head", "proj"}));
}

TEST(KappaTune, MatricesAboveMaxDimAreSkipped) {
  torch::manual_seed(4);
  auto root = std::make_shared<torch::nn::Module>();
  root->register_module("wide", peft::nn::Linear(9, 4));  // (4, 9): 9 > 8
  root->register_module("tall", peft::nn::Linear(4, 9));  // (9, 4)
  root->register_module("edge", peft::nn::Linear(8, 8));  // 8 <= 8 is analyzed
  peft::KappaOptions o = kQuiet;
  o.max_dim_size_to_analyze = 8;
  peft::KappaTuneSelector sel(*root, o);
  ASSERT_EQ(sel.scores().size(), 1u);
  EXPECT_EQ(sel.scores()[0].name, "edge");
  EXPECT_EQ(peft::KappaTuneSelector(*root, kQuiet).scores().size(), 3u);
}

// A fused MoE block: experts.gate_up_proj (3 experts with kappa 2, 4, 12) and experts.down_proj
// (kappa 5 each), plus tensors that must not be picked up.
struct MoeImpl : torch::nn::Module {
  MoeImpl() {
    auto experts = register_module("experts", std::make_shared<torch::nn::Module>());
    experts->register_parameter("gate_up_proj",
                                torch::stack({with_singular_values(4, 6, spectrum(4, 2.0)),
                                              with_singular_values(4, 6, spectrum(4, 4.0)),
                                              with_singular_values(4, 6, spectrum(4, 12.0))}));
    experts->register_parameter("down_proj",
                                torch::stack({with_singular_values(6, 3, spectrum(3, 5.0)),
                                              with_singular_values(6, 3, spectrum(3, 5.0))}));
    experts->register_parameter("router", torch::randn({2, 4, 4}));      // 3-D, no MoE suffix
    experts->register_parameter("extra_up_proj", torch::randn({4, 4}));  // suffix, but 2-D
    register_parameter("gate_proj", torch::randn({2, 4, 4}));            // no "." before the suffix
    auto lin = register_module("router_lin", peft::nn::Linear(4, 4, false));
    set_weight(*lin, with_singular_values(4, 4, spectrum(4, 3.0)));
  }
};
TORCH_MODULE(Moe);

TEST(KappaTune, ThreeDimensionalParametersAverageKappaOverExperts) {
  torch::manual_seed(5);
  Moe moe;
  peft::KappaTuneSelector sel(*moe, kQuiet);
  ASSERT_EQ(sel.scores().size(), 3u);
  EXPECT_EQ(sel.scores()[0].name, "router_lin");
  EXPECT_FALSE(sel.scores()[0].is_parameter);
  EXPECT_EQ(sel.scores()[1].name, "experts.down_proj");
  EXPECT_TRUE(sel.scores()[1].is_parameter);
  expect_rel(sel.scores()[1].kappa, 5.0);
  EXPECT_EQ(sel.scores()[2].name, "experts.gate_up_proj");
  expect_rel(sel.scores()[2].kappa, 6.0);
  EXPECT_EQ(sel.get_best_targets(), Names{"router_lin"});
  EXPECT_EQ(sel.get_best_target_parameters(std::nullopt, 1), Names{"experts.down_proj"});
  EXPECT_EQ(sel.get_best_target_parameters(std::nullopt, std::nullopt, 5.5),
            Names{"experts.down_proj"});

  auto t = peft::find_kappa_target_modules(*moe, 0.5, kQuiet);
  EXPECT_EQ(t.target_modules, Names{"router_lin"});
  ASSERT_TRUE(t.target_parameters.has_value());
  EXPECT_EQ(*t.target_parameters, Names{"experts.down_proj"});

  // A custom suffix list replaces the defaults; the expert-dim limit ignores the expert count.
  peft::KappaOptions o = kQuiet;
  o.moe_param_suffixes = {".router"};
  o.max_dim_size_to_analyze = 4;
  peft::KappaTuneSelector custom(*moe, o);
  EXPECT_EQ(custom.get_best_target_parameters(), Names{"experts.router"});
}

TEST(KappaTune, TargetParametersIsNulloptWithoutMoeParameters) {
  torch::manual_seed(6);
  RankNet net;
  auto t = peft::find_kappa_target_modules(*net, 0.2, kQuiet);
  EXPECT_EQ(t.target_modules, Names{"block.lo"});
  EXPECT_FALSE(t.target_parameters.has_value());
  auto all = peft::find_kappa_target_modules(*net, 1.0, kQuiet);
  EXPECT_EQ(all.target_modules.size(), 4u);

  auto empty = std::make_shared<torch::nn::Module>();
  auto none = peft::find_kappa_target_modules(*empty, 0.2, kQuiet);
  EXPECT_TRUE(none.target_modules.empty());
  EXPECT_FALSE(none.target_parameters.has_value());
}

TEST(KappaTune, Bfloat16WeightsAreAnalyzedInFloat32) {
  torch::manual_seed(7);
  RankNet net;
  net->to(torch::kBFloat16);
  peft::KappaTuneSelector sel(*net, kQuiet);
  EXPECT_EQ(sel.get_best_targets(), (Names{"block.lo", "block.mid", "head", "block.hi"}));
  expect_rel(sel.scores()[1].kappa, 10.0, 0.05);  // bf16 rounding of the weights
}

// NaN weights: LibTorch's svdvals refuses them; the error names the layer.
TEST(KappaTune, NanWeightErrorNamesTheLayer) {
  auto root = std::make_shared<torch::nn::Module>();
  auto lin = root->register_module("broken", peft::nn::Linear(4, 4, false));
  set_weight(*lin, torch::full({4, 4}, std::numeric_limits<float>::quiet_NaN()));
  try {
    peft::KappaTuneSelector sel(*root, kQuiet);
    FAIL() << "no error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"broken\""), std::string::npos) << e.what();
  }
}

// An inf entry gives NaN singular values here (LAPACK does not fail): that kappa sorts last, and a
// threshold never selects it.
TEST(KappaTune, NanKappaSortsLast) {
  auto root = std::make_shared<torch::nn::Module>();
  auto inf = root->register_module("inf", peft::nn::Linear(4, 4, false));
  auto ok = root->register_module("ok", peft::nn::Linear(4, 4, false));
  auto w = torch::eye(4);
  w[0][1] = std::numeric_limits<float>::infinity();
  set_weight(*inf, w);
  set_weight(*ok, torch::eye(4) * 1000.0);
  try {
    peft::KappaTuneSelector sel(*root, kQuiet);
    ASSERT_EQ(sel.scores().size(), 2u);
    EXPECT_TRUE(std::isnan(sel.scores()[1].kappa));
    EXPECT_EQ(sel.get_best_targets(), (Names{"ok", "inf"}));
    EXPECT_EQ(sel.get_best_targets(std::nullopt, std::nullopt, 1e30), Names{"ok"});
  } catch (const peft::Error& e) {  // another LAPACK may refuse inf as well
    EXPECT_NE(std::string(e.what()).find("\"inf\""), std::string::npos) << e.what();
  }
}

TEST(KappaTune, ProgressGoesToStderrOnlyWhenAsked) {
  torch::manual_seed(8);
  RankNet net;
  testing::internal::CaptureStderr();
  peft::KappaTuneSelector quiet(*net, kQuiet);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  testing::internal::CaptureStderr();
  peft::KappaTuneSelector loud(*net);
  EXPECT_NE(testing::internal::GetCapturedStderr().find("Computing SVD (linear layers)"),
            std::string::npos);
}

// `peft inspect --kappa TOP_P` on the golden tiny Llama: 2 layers x 7 linears + lm_head = 15
// candidates, top_p 0.2 -> 3 modules.
TEST(KappaTuneCli, InspectKappaPrintsSelectionAndSnippet) {
  const std::filesystem::path base =
      std::filesystem::path(peft::test::fixture("golden/model-llama")) / "base";
  auto r = peft::test::peft_cli("inspect --model '" + base.string() + "' --kappa 0.2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("kappa="), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"target_modules\": ["), std::string::npos) << r.output;

  auto j = peft::test::peft_cli("inspect --json --model '" + base.string() + "' --kappa 0.2");
  ASSERT_EQ(j.code, 0) << j.output;
  auto out = nlohmann::json::parse(j.output);
  const auto& k = out["kappa"];
  EXPECT_EQ(k["candidates"].size(), 15u);
  ASSERT_EQ(k["target_modules"].size(), 3u);
  EXPECT_TRUE(k["target_parameters"].is_null());
  // Lowest kappa first, and the snippet's list is the selection.
  EXPECT_LE(k["candidates"][0]["kappa"].get<double>(), k["candidates"][1]["kappa"].get<double>());
  EXPECT_EQ(k["target_modules"][0], k["candidates"][0]["name"]);
  EXPECT_EQ(k["lora_config"]["target_modules"], k["target_modules"]);
}

}  // namespace
