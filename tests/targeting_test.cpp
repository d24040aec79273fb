// Target matching against PEFT: the golden targeting cases (expected.json from PEFT 0.20) and ports
// of PEFT's own tests (semantics doc 7.3 items 1-4, 6, 16-18).
#include "peft/targeting.h"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "peft/error.h"
#include "test_util.h"

namespace peft {
namespace {

using json = nlohmann::ordered_json;
using Names = std::vector<std::string>;

// What() without the "[component] " prefix, i.e. the PEFT sentence first.
std::string message_of(const Error& e) {
  const std::string what = e.what();
  const auto pos = what.find("] ");
  return pos == std::string::npos ? what : what.substr(pos + 2);
}

// named_modules() order for a list of leaf names: every dotted prefix (container) first appears
// just before its first child, as in PyTorch's pre-order traversal. Containers cannot host LoRA.
std::vector<ModuleInfo> with_containers(const std::vector<ModuleInfo>& leaves) {
  std::vector<ModuleInfo> out;
  std::set<std::string> seen;
  for (const auto& leaf : leaves) {
    for (size_t dot = leaf.name.find('.'); dot != std::string::npos;
         dot = leaf.name.find('.', dot + 1)) {
      const std::string prefix = leaf.name.substr(0, dot);
      if (seen.insert(prefix).second) out.push_back({prefix, false, false, false, "Module"});
    }
    if (seen.insert(leaf.name).second) out.push_back(leaf);
  }
  return out;
}

// Designated initializers of LoraConfig trip -Wmissing-field-initializers (-Wextra), hence this
// helper.
LoraConfig make_config(std::optional<StrOrList> targets,
                       std::optional<StrOrList> exclude = std::nullopt, int r = 8,
                       double lora_alpha = 8) {
  LoraConfig c;
  c.target_modules = std::move(targets);
  c.exclude_modules = std::move(exclude);
  c.r = r;
  c.lora_alpha = lora_alpha;
  return c;
}

ModuleInfo linear(const std::string& name) { return {name, true, true, false, "Linear"}; }
ModuleInfo other(const std::string& name, const std::string& type) {
  return {name, false, false, false, type};
}

// MLP of PEFT's test_custom_models.py: lin0 -> relu -> drop -> lin1 -> sm.
std::vector<ModuleInfo> mlp() {
  return {linear("lin0"), other("relu", "ReLU"), other("drop", "Dropout"), linear("lin1"),
          other("sm", "LogSoftmax")};
}

std::optional<StrOrList> str_or_list(const json& j) {
  if (j.is_null()) return std::nullopt;
  if (j.is_string()) return j.get<std::string>();
  return j.get<Names>();
}

// The subset of adapter_config.json that targeting reads (config.cpp owns the real parser).
LoraConfig parse_config(const json& j) {
  LoraConfig c;
  c.r = j.value("r", 8);
  c.lora_alpha = j.value("lora_alpha", 8.0);
  c.use_rslora = j.value("use_rslora", false);
  if (j.contains("target_modules")) c.target_modules = str_or_list(j["target_modules"]);
  if (j.contains("exclude_modules")) c.exclude_modules = str_or_list(j["exclude_modules"]);
  if (j.contains("layers_pattern")) c.layers_pattern = str_or_list(j["layers_pattern"]);
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const json& l = j["layers_to_transform"];
    if (l.is_number_integer()) {
      c.layers_to_transform = l.get<int64_t>();
    } else {
      c.layers_to_transform = l.get<std::vector<int64_t>>();
    }
  }
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null()) {
    c.modules_to_save = j["modules_to_save"].get<Names>();
  }
  if (j.contains("target_parameters") && !j["target_parameters"].is_null()) {
    c.target_parameters = j["target_parameters"].get<Names>();
  }
  // Kept as locals: items() of a temporary would dangle. ordered_json keeps the file's key order,
  // which is what decides the first matching pattern.
  const json rank_pattern = j.value("rank_pattern", json::object());
  const json alpha_pattern = j.value("alpha_pattern", json::object());
  for (const auto& [k, v] : rank_pattern.items()) c.rank_pattern.emplace_back(k, v.get<int>());
  for (const auto& [k, v] : alpha_pattern.items()) c.alpha_pattern.emplace_back(k, v.get<double>());
  return c;
}

json read_json(const std::string& rel) {
  std::ifstream in(test::fixture(rel));
  EXPECT_TRUE(in.good()) << rel;
  return json::parse(in);
}

// Runs every config of one golden case and compares targeted set, r, alpha, scaling and errors.
void check_golden(const std::string& dir) {
  const json arch = read_json("golden/targeting-" + dir + "/base/architecture.json");
  const json expected = read_json("golden/targeting-" + dir + "/expected.json");
  std::vector<ModuleInfo> leaves;
  for (const auto& m : arch["modules"]) {
    ASSERT_EQ(m["type"].get<std::string>(), "Linear");
    leaves.push_back(linear(m["name"].get<std::string>()));
  }
  const std::vector<ModuleInfo> modules = with_containers(leaves);
  ASSERT_GT(expected["configs"].size(), 10u);
  for (const auto& [id, c] : expected["configs"].items()) {
    SCOPED_TRACE(dir + "/" + id);
    const LoraConfig config = parse_config(c["lora_config"]);
    if (c.contains("error")) {
      try {
        find_targets(config, modules);
        ADD_FAILURE() << "expected " << c["error"]["message"];
      } catch (const NoMatchingModuleError& e) {
        EXPECT_EQ(message_of(e).rfind(c["error"]["message"].get<std::string>(), 0), 0u) << e.what();
      }
      continue;
    }
    const TargetingResult result = find_targets(config, modules);
    std::set<std::string> targeted(result.targeted.begin(), result.targeted.end());
    std::set<std::string> want;
    for (const auto& [name, info] : c["targeted"].items()) {
      want.insert(name);
      const ResolvedRank rank = resolve_rank(config, name);
      EXPECT_EQ(rank.r, info["r"].get<int>()) << name;
      EXPECT_DOUBLE_EQ(rank.lora_alpha, info["lora_alpha"].get<double>()) << name;
      EXPECT_NEAR(rank.scaling, info["scaling"].get<double>(), 1e-6) << name;
    }
    EXPECT_EQ(targeted, want);
    std::set<std::string> left;
    for (const auto& m : leaves) {
      if (!targeted.count(m.name)) left.insert(m.name);
    }
    const auto not_targeted = c["not_targeted_linear"].get<Names>();
    EXPECT_EQ(left, std::set<std::string>(not_targeted.begin(), not_targeted.end()));
  }
}

TEST(Targeting, GoldenNested) { check_golden("nested"); }
TEST(Targeting, GoldenTransformerLike) { check_golden("transformer-like"); }

// PEFT tests/test_tuners_utils.py REGEX_TEST_CASES, verbatim.
TEST(Targeting, RegexTruthTable) {
  using Layers = std::optional<std::vector<int64_t>>;
  using Pattern = std::optional<StrOrList>;
  struct Row {
    std::string key;
    StrOrList targets;
    Layers layers;
    Pattern pattern;
    bool expected;
  };
  const Names none;
  auto L = [](std::initializer_list<int64_t> l) { return Layers(std::vector<int64_t>(l)); };
  const Pattern empty_list = Names{};
  const Pattern bar = Names{"bar"};
  const Pattern h = Names{"h"};
  // clang-format off
  const std::vector<Row> rows = {
      {"", none, {}, {}, false},
      {"", Names{"foo"}, {}, {}, false},
      {"foo", none, {}, {}, false},
      {"foo", Names{"foo"}, {}, {}, true},
      {"foo", Names{"bar"}, {}, {}, false},
      {"foo", Names{"foo", "bar"}, {}, {}, true},
      {"foo", "foo", {}, {}, true},
      {"foo", ".*oo", {}, {}, true},
      {"foo", "fo.*", {}, {}, true},
      {"foo", ".*bar.*", {}, {}, false},
      {"foobar", ".*oba.*", {}, {}, true},
      {"foo.bar.1.baz", Names{"baz"}, L({1}), bar, true},
      {"foo.bar.1.baz", Names{"baz"}, L({0}), bar, false},
      {"foo.bar.1.baz", Names{"baz"}, L({2}), bar, false},
      {"foo.bar.10.baz", Names{"baz"}, L({0}), bar, false},
      {"foo.bar.10.baz", Names{"baz"}, L({1}), bar, false},
      {"foo.bar.1.baz", Names{"baz"}, L({0, 1, 2}), bar, true},
      {"foo.bar.1.baz", Names{"baz", "spam"}, L({1}), bar, true},
      {"foo.bar.1.baz", Names{"baz", "spam"}, L({0, 1, 2}), bar, true},
      {"foo.whatever.1.baz", Names{"baz"}, L({1}), empty_list, true},
      {"foo.whatever.1.baz", Names{"baz"}, L({0}), empty_list, false},
      {"foo.whatever.1.baz", Names{"baz"}, L({1}), Pattern{""}, true},
      {"foo.whatever.1.baz", Names{"baz"}, L({0}), Pattern{""}, false},
      {"foo.whatever.1.baz", Names{"baz"}, L({1}), {}, true},
      {"foo.whatever.1.baz", Names{"baz"}, L({0}), {}, false},
      {"transformer.h.1.attn.attention.q_proj.foo", Names{"q_proj"}, {}, empty_list, false},
      {"transformer.h.1.attn.attention.q_proj", none, {}, empty_list, false},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, {}, empty_list, true},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj", "v_proj"}, {}, empty_list, true},
      {"transformer.h.1.attn.attention.resid_dropout", Names{"q_proj", "v_proj"}, {}, empty_list, false},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, L({1}), h, true},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, L({0}), h, false},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, L({2}), h, false},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, L({0, 1, 2}), h, true},
      {"transformer.h.1.attn.attention.q_proj", Names{"q_proj", "v_proj"}, L({0, 1, 2}), h, true},
      {"foo.bar.q_proj", Names{"q_proj"}, {}, empty_list, true},
      {"foo.bar.1.baz", Names{"baz"}, L({1}), Pattern{Names{"foo"}}, false},
      {"foo.bar.1.baz", Names{"baz"}, L({1}), Pattern{Names{"baz"}}, false},
      {"bar.1.baz", Names{"baz"}, L({1}), bar, false},
      {"foo.bar.001.baz", Names{"baz"}, L({1}), bar, true},
      {"foo.bar.1.spam.2.baz", Names{"baz"}, L({1}), bar, true},
      {"foo.bar.2.spam.1.baz", Names{"baz"}, L({1}), bar, false},
      {"blocks.1.weight", Names{"weight"}, L({1}), Pattern{Names{"blocks"}}, false},
      {"blocks.1.bias", Names{"weight"}, L({1}), Pattern{Names{"blocks"}}, false},
      {"mlp.blocks.1.weight", Names{"weight"}, L({1}), Pattern{Names{"blocks"}}, true},
      {"mlp.blocks.1.bias", Names{"weight"}, L({1}), Pattern{Names{"blocks"}}, false},
  };
  // clang-format on
  ASSERT_EQ(rows.size(), 46u);
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    LoraConfig config;
    config.target_modules = row.targets;
    if (row.layers) config.layers_to_transform = *row.layers;
    config.layers_pattern = row.pattern;
    const bool matched =
        check_target_module_exists(config, row.targets, row.key) == MatchResult::kMatched;
    EXPECT_EQ(matched, row.expected) << "row " << i << " key '" << row.key << "'";
  }
}

TEST(Targeting, RegexSemantics) {
  EXPECT_TRUE(
      regex_fullmatch("foo|foobar", "foobar"));  // backtracks into the alternation like Python
  EXPECT_FALSE(regex_fullmatch("foo", "foobar"));
  EXPECT_TRUE(regex_match("foo", "foobar"));
  EXPECT_FALSE(regex_match("bar", "foobar"));  // anchored at the start
  EXPECT_EQ(regex_match_group(R"(a(\d+)b)", "a12bc", 1), "12");
  EXPECT_EQ(regex_match_group(R"(a(x)?b)", "ab", 1), std::nullopt);  // group not taking part
  EXPECT_EQ(regex_match_group("z", "ab", 0), std::nullopt);
  try {
    regex_fullmatch("lin(0", "lin0");
    ADD_FAILURE() << "invalid pattern accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'lin(0'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("parenthesis"), std::string::npos) << e.what();
  }
  // The cache is shared: hammer it from several threads with fresh and cached patterns.
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &failures] {
      for (int i = 0; i < 200; ++i) {
        const std::string p = "lin" + std::to_string((i + t) % 17) + ".*";
        if (!regex_fullmatch(p, "lin" + std::to_string((i + t) % 17) + "_x")) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(Targeting, CatastrophicBacktrackingIsAConfigErrorNotAHang) {
  // 2^40 ways to fail: Python's re would run for days; PCRE2 stops at its match limit.
  try {
    regex_fullmatch("(a|a)*", std::string(40, 'a') + "!");
    ADD_FAILURE() << "a catastrophic pattern matched or failed without an error";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'(a|a)*'"), std::string::npos) << what;
    EXPECT_NE(what.find("backtracking steps"), std::string::npos) << what;
  }
  // Ordinary patterns stay well inside the limit.
  EXPECT_TRUE(regex_fullmatch(R"(.*\.(q|k|v|o)_proj)", "model.layers.31.self_attn.q_proj"));
}

TEST(Targeting, LayerIndex) {
  const std::string moe = "model.layers.1.mlp.experts.0.up_proj";
  EXPECT_EQ(layer_index(std::nullopt, moe), 1);  // lazy: outer layer, not the expert index
  EXPECT_EQ(layer_index(StrOrList{"layers"}, moe), 1);
  EXPECT_EQ(layer_index(StrOrList{Names{"h", "layers"}}, moe), 1);
  EXPECT_EQ(layer_index(StrOrList{"experts"}, moe), 0);
  EXPECT_EQ(layer_index(StrOrList{"bar"}, "foo.bar.001.baz"), 1);
  EXPECT_EQ(layer_index(StrOrList{Names{}}, "foo.whatever.7.baz"), 7);
  EXPECT_EQ(layer_index(StrOrList{""}, "foo.whatever.7.baz"), 7);
  // A ModuleList at the root never matches a pattern (the dot before it is mandatory), nor the
  // default.
  EXPECT_EQ(layer_index(StrOrList{Names{"layers"}}, "layers.0.q_proj"), std::nullopt);
  EXPECT_EQ(layer_index(std::nullopt, "layers.0.q_proj"), std::nullopt);
  EXPECT_EQ(layer_index(StrOrList{"layers"}, "model.layers.2"),
            std::nullopt);  // needs a trailing dot
}

// test_layers_to_transform_filters_by_layer_not_expert_index (toy MoE, 4 layers x 2 experts).
TEST(Targeting, LayersToTransformMoe) {
  std::vector<ModuleInfo> leaves;
  for (int l = 0; l < 4; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    leaves.push_back(linear(p + ".self_attn.q_proj"));
    for (int e = 0; e < 2; ++e)
      leaves.push_back(linear(p + ".mlp.experts." + std::to_string(e) + ".up_proj"));
  }
  const auto modules = with_containers(leaves);
  for (const std::optional<StrOrList>& pattern :
       {std::optional<StrOrList>{}, std::optional<StrOrList>{"layers"},
        std::optional<StrOrList>{Names{"h", "layers"}}}) {
    LoraConfig config = make_config(Names{"q_proj", "up_proj"}, std::nullopt, 2, 4);
    config.layers_to_transform = std::vector<int64_t>{1};
    config.layers_pattern = pattern;
    EXPECT_EQ(find_targets(config, modules).targeted,
              (Names{"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.experts.0.up_proj",
                     "model.layers.1.mlp.experts.1.up_proj"}));
  }
  // layers_to_transform=0 (an int) is a real filter, not "unset"
  // (test_config_layers_to_transform_index_zero).
  LoraConfig zero = make_config(Names{"q_proj"});
  zero.layers_to_transform = int64_t{0};
  zero.layers_pattern = StrOrList{"layers"};
  EXPECT_EQ(find_targets(zero, modules).targeted, Names{"model.layers.0.self_attn.q_proj"});
}

// TestTargetedModuleNames.
TEST(Targeting, TargetedModuleNames) {
  const auto modules = mlp();
  auto targets = [&](StrOrList t) {
    return find_targets(make_config(std::move(t)), modules).targeted;
  };
  EXPECT_EQ(targets("lin0"), Names{"lin0"});
  EXPECT_EQ(targets("lin.*"), (Names{"lin0", "lin1"}));
  EXPECT_EQ(targets(Names{"lin0"}), Names{"lin0"});
  EXPECT_EQ(targets(Names{"lin0", "lin1"}), (Names{"lin0", "lin1"}));
  // "all-linear" (any case) on a plain module keeps the last Linear; output_layer_name drops it.
  const TargetingResult all = find_targets(make_config("ALL-Linear"), modules);
  EXPECT_EQ(all.targeted, (Names{"lin0", "lin1"}));
  ASSERT_TRUE(all.resolved_target_modules);
  EXPECT_EQ(std::get<Names>(*all.resolved_target_modules), (Names{"lin0", "lin1"}));
  EXPECT_EQ(find_targets(make_config("all-linear"), modules, {}, "lin1").targeted, Names{"lin0"});
  // target_modules None: the model type's defaults (test_realistic_example with Bloom).
  const TargetingResult defaults = find_targets(LoraConfig{}, modules, {"lin1"});
  EXPECT_EQ(defaults.targeted, Names{"lin1"});
  EXPECT_EQ(std::get<Names>(*defaults.resolved_target_modules), Names{"lin1"});
}

// TestExcludedModuleNames.
TEST(Targeting, ExcludedModuleNames) {
  const auto modules = mlp();
  EXPECT_EQ(find_targets(make_config("lin.*", "lin0"), modules).targeted, Names{"lin1"});
  EXPECT_EQ(find_targets(make_config(Names{"lin0", "lin1"}, "lin0"), modules).targeted,
            Names{"lin1"});
  const TargetingResult listed =
      find_targets(make_config(Names{"lin0", "lin1"}, Names{"lin0"}), modules);
  EXPECT_EQ(listed.targeted, Names{"lin1"});
  EXPECT_EQ(listed.excluded, Names{"lin0"});

  auto error_of = [&](const LoraConfig& config,
                      const std::vector<ModuleInfo>& mods) -> std::string {
    try {
      find_targets(config, mods);
    } catch (const NoMatchingModuleError& e) {
      return message_of(e);
    }
    return "<no error>";
  };
  const Names all_names = {"lin0", "lin1", "relu", "drop", "sm"};
  EXPECT_EQ(error_of(make_config(all_names, all_names), modules)
                .rfind("All modules were excluded. This is likely unintended.", 0),
            0u);
  const std::string not_found = error_of(make_config(Names{"non_existent_module"}), modules);
  EXPECT_EQ(not_found.rfind(
                "Target modules {'non_existent_module'} not found in the base model. Please "
                "check the target modules and try again. (hint: modules that exist: lin0, lin1)",
                0),
            0u)
      << not_found;
  EXPECT_EQ(error_of(make_config(Names{"lin0", "non_existent_module"}, Names{"lin0"}), modules)
                .rfind("No modules were targeted for adaptation.", 0),
            0u);
  EXPECT_EQ(error_of(make_config(Names{}), modules)
                .rfind("No `target_modules` passed but also no `target_parameters` found.", 0),
            0u);
  // A second adapter that matches nothing: the first adapter's internals count as excluded.
  std::vector<ModuleInfo> adapted = modules;
  adapted.insert(adapted.begin() + 1, {{"lin0.base_layer", true, false, true, "Linear"},
                                       {"lin0.lora_A", false, false, true, "ModuleDict"},
                                       {"lin0.lora_A.default", true, false, true, "Linear"}});
  EXPECT_EQ(error_of(make_config(Names{"non_existent_module"}), adapted)
                .rfind("No modules were targeted for adaptation.", 0),
            0u);
  EXPECT_EQ(find_targets(make_config("all-linear"), adapted).targeted, (Names{"lin0", "lin1"}));

  // Unused exclude_modules warns, with PEFT's wording.
  ScopedWarningCapture warnings;
  find_targets(make_config(Names{"lin1"}, Names{"non_existent_module"}), modules);
  EXPECT_TRUE(
      warnings.contains("You have passed exclude_modules={'non_existent_module'} but no modules "
                        "were excluded. Please check that exclude_modules was set correctly."));
}

TEST(Targeting, NotFoundMessageNotes) {
  std::vector<ModuleInfo> leaves;
  for (int i = 0; i < 12; ++i)
    leaves.push_back(linear("model.layers." + std::to_string(i) + ".q_proj"));
  LoraConfig config = make_config(Names{"nope", "it's"});
  config.layers_to_transform = std::vector<int64_t>{0, 2};
  config.layers_pattern = StrOrList{"layers"};
  try {
    find_targets(config, with_containers(leaves));
    ADD_FAILURE() << "no error";
  } catch (const NoMatchingModuleError& e) {
    EXPECT_EQ(
        message_of(e),
        "Target modules {'nope', \"it's\"} not found in the base model. Please check the target "
        "modules "
        "and try again. Note: You specified 'layers_to_transform': [0, 2]. You also specified "
        "'layers_pattern': layers. (hint: modules that exist: model.layers.0.q_proj, "
        "model.layers.1.q_proj, model.layers.2.q_proj, model.layers.3.q_proj, "
        "model.layers.4.q_proj, "
        "model.layers.5.q_proj, model.layers.6.q_proj, model.layers.7.q_proj, ... (12 in all))");
  }
  try {
    find_targets(make_config(R"(x\.y)"), leaves);
    ADD_FAILURE() << "no error";
  } catch (const NoMatchingModuleError& e) {
    EXPECT_EQ(message_of(e).rfind(R"(Target modules x\.y not found in the base model.)", 0), 0u);
  }
}

TEST(Targeting, ModulesToSaveGuard) {
  const std::vector<ModuleInfo> modules = {linear("lin0"), linear("lin1"), linear("lin1.inner"),
                                           linear("xlin1")};
  LoraConfig config = make_config(".*lin.*");
  config.modules_to_save = Names{"lin1"};
  const TargetingResult result = find_targets(config, modules);
  EXPECT_EQ(result.targeted, (Names{"lin0", "xlin1"}));
  EXPECT_EQ(result.excluded, (Names{"lin1", "lin1.inner"}));
}

TEST(Targeting, DefaultTargetConfigError) {
  try {
    find_targets(LoraConfig{}, mlp());
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(message_of(e).rfind(
                  "Please specify `target_modules` or `target_parameters`in `peft_config`", 0),
              0u);
  }
  // Only parameters targeted: modules stay untouched, no error, target_modules stays None.
  LoraConfig params;
  params.target_parameters = Names{"lin0.weight"};
  const TargetingResult result = find_targets(params, mlp());
  EXPECT_TRUE(result.targeted.empty());
  EXPECT_FALSE(result.resolved_target_modules.has_value());
  EXPECT_EQ(result.unmatched.size(), 5u);
}

TEST(Targeting, UnsupportedModule) {
  try {
    find_targets(make_config(Names{"lin0", "relu"}), mlp());
    ADD_FAILURE() << "no error";
  } catch (const UnsupportedError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("Target module relu (ReLU) is not supported"), std::string::npos) << what;
    EXPECT_NE(what.find("Linear, GPT-2 Conv1D, Embedding, Conv1d, Conv2d, Conv3d"),
              std::string::npos);
    EXPECT_NE(what.find("peft::nn"), std::string::npos);
  }
}

// test_lora_scaling_default / test_lora_rslora_scaling / *_scaling_pattern (linear, embed, conv2d
// model).
TEST(Targeting, ScalingAndPatterns) {
  LoraConfig plain = make_config(std::nullopt, std::nullopt, 16, 3);
  for (const char* name : {"linear", "embed", "conv2d"}) {
    EXPECT_DOUBLE_EQ(resolve_rank(plain, name).scaling, 3.0 / 16);
    plain.use_rslora = true;
    EXPECT_DOUBLE_EQ(resolve_rank(plain, name).scaling, 3.0 / 4);
    plain.use_rslora = false;
  }
  LoraConfig pattern = make_config(std::nullopt, std::nullopt, 25, 17);
  pattern.rank_pattern = {{"embed", 9}, {"conv2d", 16}};
  pattern.alpha_pattern = {{"linear", 11}, {"conv2d", 13}};
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "linear").scaling, 11.0 / 25);
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "embed").scaling, 17.0 / 9);
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "conv2d").scaling, 13.0 / 16);
  pattern.use_rslora = true;
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "linear").scaling, 11.0 / 5);
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "embed").scaling, 17.0 / 3);
  EXPECT_DOUBLE_EQ(resolve_rank(pattern, "conv2d").scaling, 13.0 / 4);
  EXPECT_EQ(first_pattern_key({"foo", "^module.foo"}, "module.foo"), "foo");  // first key wins
  EXPECT_EQ(first_pattern_key({"^foo"}, "module.foo"), std::nullopt);
  EXPECT_EQ(first_pattern_key({"oo"}, "module.foo"), std::nullopt);  // whole dotted segments only
}

// test_rank_alpha_pattern_override (issue 2194): nn.Sequential(layer, layer) deduplicates to "0.*".
TEST(Targeting, RankAlphaPatternOverride) {
  LoraConfig with_rank = make_config(Names{"linear"}, std::nullopt, 8, 1);
  with_rank.rank_pattern = {{"linear", 8}};
  with_rank.alpha_pattern = {{"0.linear", 2}};
  LoraConfig without_rank = with_rank;
  without_rank.rank_pattern.clear();
  const auto modules =
      with_containers({linear("0.linear"), {"0.embed", false, true, false, "Embedding"}});
  EXPECT_EQ(find_targets(with_rank, modules).targeted, Names{"0.linear"});
  const ResolvedRank a = resolve_rank(with_rank, "0.linear");
  const ResolvedRank b = resolve_rank(without_rank, "0.linear");
  EXPECT_EQ(a.r, 8);
  EXPECT_DOUBLE_EQ(a.lora_alpha, 2);
  EXPECT_DOUBLE_EQ(a.scaling, b.scaling);
  EXPECT_DOUBLE_EQ(a.scaling, 0.25);
}

}  // namespace
}  // namespace peft
