// LoraConfig: adapter_config.json parsing / writing against PEFT-written files, defaults, and
// validation.
#include "peft/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "peft/error.h"
#include "test_util.h"

namespace peft {
namespace {

using peft::test::message_of;

using nlohmann::json;
using Kind = InitLoraWeights::Kind;

// Copies of PEFT 0.20.0 save_pretrained output (tests/fixtures/configs/README.md).
const std::vector<std::string> kPeftFiles = {
    "configs/layer-linear.json",      "configs/param-experts-3d.json",
    "configs/model-bert-seqcls.json", "configs/trainable-tokens-llama.json",
    "configs/init-mlp-olora.json",
};

// A minimal loadable document plus `extra` keys (a JSON object body without braces).
std::string doc(const std::string& extra = "") {
  return std::string("{\"peft_type\": \"LORA\"") + (extra.empty() ? "" : ", " + extra) + "}";
}

LoraConfig parse(const std::string& extra) { return lora_config_from_json_text(doc(extra)); }

TEST(LoraConfig, PeftFilesRoundTripExactly) {
  for (const auto& rel : kPeftFiles) {
    SCOPED_TRACE(rel);
    const std::string original = test::read_file(test::fixture(rel));
    ASSERT_FALSE(original.empty());
    ScopedWarningCapture warnings;
    const LoraConfig config = lora_config_from_json_text(original, rel);
    const std::string written = lora_config_to_json_text(config);
    EXPECT_EQ(json::parse(written), json::parse(original));
    // Same keys, same order, same number formatting: byte for byte what PEFT wrote.
    EXPECT_EQ(written, original);
    EXPECT_TRUE(warnings.messages().empty());
    EXPECT_EQ(lora_config_from_json_text(written), config);
  }
}

TEST(LoraConfig, PeftFileFieldsAreParsed) {
  const auto linear = load_lora_config(test::fixture("configs/layer-linear.json"));
  EXPECT_EQ(linear.r, 4);
  EXPECT_EQ(linear.lora_alpha, 8);
  EXPECT_TRUE(linear.inference_mode);
  EXPECT_EQ(linear.init_lora_weights.kind, Kind::kFalse);
  EXPECT_EQ(linear.target_modules, StrOrList(std::vector<std::string>{"lin1", "lin0"}));
  EXPECT_EQ(linear.auto_mapping,
            RawJson{R"({"parent_library": "__main__", "base_model_class": "Custom"})"});
  EXPECT_EQ(linear.peft_version, "0.20.0");
  EXPECT_FALSE(linear.task_type.has_value());
  EXPECT_FALSE(linear.loftq_config.has_value());

  const auto experts = load_lora_config(test::fixture("configs/param-experts-3d.json"));
  const std::vector<std::pair<std::string, int>> ranks = {{"down_proj", 3},
                                                          {"experts.gate_up_proj", 2}};
  EXPECT_EQ(experts.rank_pattern, ranks);
  EXPECT_EQ(experts.target_parameters,
            (std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));

  const auto bert = load_lora_config(test::fixture("configs/model-bert-seqcls.json"));
  EXPECT_EQ(bert.task_type, TaskType::kSeqCls);
  // PEFT appends the classifier names to the user's list, duplicates included; kept as written.
  EXPECT_EQ(bert.modules_to_save, (std::vector<std::string>{"classifier", "classifier", "score"}));

  const auto tokens = load_lora_config(test::fixture("configs/trainable-tokens-llama.json"));
  EXPECT_EQ(tokens.trainable_token_indices, TrainableTokenIndices(std::vector<int64_t>{3, 5, 7}));

  const auto olora = load_lora_config(test::fixture("configs/init-mlp-olora.json"));
  EXPECT_EQ(olora.init_lora_weights.kind, Kind::kOlora);
}

TEST(LoraConfig, DefaultsMatchPeft) {
  const LoraConfig c;
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.lora_alpha, 8);
  EXPECT_EQ(c.lora_dropout, 0.0);
  EXPECT_EQ(c.bias, Bias::kNone);
  EXPECT_EQ(c.init_lora_weights.kind, Kind::kTrue);
  EXPECT_EQ(c.megatron_core, "megatron.core");
  EXPECT_EQ(c.qalora_group_size, 16);
  EXPECT_NO_THROW(c.validate());

  const json expected = json::parse(R"({
    "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
    "auto_mapping": null, "base_model_name_or_path": null, "bias": "none", "corda_config": null,
    "ensure_weight_tying": false, "eva_config": null, "exclude_modules": null,
    "fan_in_fan_out": false, "inference_mode": false, "init_lora_weights": true,
    "kasa_config": null, "layer_replication": null, "layers_pattern": null,
    "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false,
    "lora_dropout": 0.0, "lora_ga_config": null, "megatron_config": null,
    "megatron_core": "megatron.core", "modules_to_save": null, "monteclora_config": null,
    "peft_type": "LORA", "peft_version": null, "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": null, "target_modules": null, "target_parameters": null,
    "task_type": null, "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
    "use_qalora": false, "use_rslora": false, "velora_config": null})");
  const std::string text = lora_config_to_json_text(c);
  const auto written = nlohmann::ordered_json::parse(text);
  EXPECT_EQ(json::parse(text), expected);
  EXPECT_EQ(written.size(), 41u);
  std::vector<std::string> keys;
  for (const auto& item : written.items()) keys.push_back(item.key());
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  // Python writes float fields with a fraction and int fields without.
  EXPECT_NE(text.find("\"lora_dropout\": 0.0"), std::string::npos);
  EXPECT_NE(text.find("\"lora_alpha\": 8,"), std::string::npos);
  EXPECT_NE(text.find("\n  \"r\": 8,\n"), std::string::npos);  // indent 2
  // A document with peft_type only gives the defaults.
  EXPECT_EQ(lora_config_from_json_text(doc()), c);
}

TEST(LoraConfig, DesignatedInitializerConfigRoundTrips) {
  const LoraConfig c{
      .task_type = TaskType::kCausalLm,
      .base_model_name_or_path = "meta-llama/Llama-3.2-1B",
      .revision = "main",
      .inference_mode = true,
      .peft_version = "0.20.1.dev0@UNKNOWN",
      .r = 16,
      .target_modules = std::vector<std::string>{"v_proj", "q_proj"},
      .exclude_modules = std::string(".*layers\\.0\\..*"),
      .lora_alpha = 32.5,
      .lora_dropout = 0.05,
      .bias = Bias::kLoraOnly,
      .use_rslora = true,
      .modules_to_save = std::vector<std::string>{"lm_head"},
      .init_lora_weights = {.kind = Kind::kPissa, .niter = 4},
      .layers_to_transform = std::vector<int64_t>{0, 2},
      .layers_pattern = std::vector<std::string>{"layers", "h"},
      .rank_pattern = {{"z_proj", 4}, {"a_proj", 2}},
      .alpha_pattern = {{"z_proj", 8}, {"a_proj", 0.5}},
      .megatron_config = RawJson{R"({"tensor_model_parallel_size":2})"},
      .megatron_core = "my.megatron",
      .trainable_token_indices =
          std::vector<std::pair<std::string, std::vector<int64_t>>>{{"lm_head", {1, 2}},
                                                                    {"embed_tokens", {0}}},
      .loftq_config = LoftQConfig{.loftq_bits = 8, .loftq_iter = 2},
      .eva_config = EvaConfig{.rho = 1.5, .whiten = true},
      .corda_config =
          CordaConfig{.cache_file = "cache.pt", .corda_method = peft::CordaMethod::kKpm},
      .lora_ga_config =
          LoraGAConfig{.direction = peft::LoraGADirection::kArBr, .stable_gamma = 8.5},
      .use_dora = true,
      .velora_config = VeloraConfig{.num_groups = 32, .init_type = "random"},
      .alora_invocation_tokens = std::vector<int64_t>{1, 2, 3},
      .use_qalora = true,
      .qalora_group_size = 32,
      .monteclora_config = MontecloraConfig{.num_samples = 4, .use_entropy = true},
      .layer_replication = std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {2, 5}},
      .lora_bias = true,
      .target_parameters = std::vector<std::string>{"mlp.experts.down_proj"},
      .use_bdlora = BdLoraConfig{.target_modules_bd_a = std::vector<std::string>{"o_proj"},
                                 .nblocks = 2,
                                 .match_strict = false},
      .arrow_config = ArrowConfig{.top_k = 2, .rng_seed = 7, .task_adapter_names = {"a", "b"}},
      .kasa_config = RawJson{R"({"beta":0.001})"},
      .ensure_weight_tying = true,
  };
  const std::string text = lora_config_to_json_text(c);
  ScopedWarningCapture warnings;
  EXPECT_EQ(lora_config_from_json_text(text), c);
  EXPECT_TRUE(warnings.messages().empty());
  const json written = json::parse(text);
  EXPECT_EQ(written["init_lora_weights"], "pissa_niter_4");
  EXPECT_EQ(written["lora_ga_config"]["stable_gamma"], 8.5);
  EXPECT_EQ(written["arrow_config"]["gks_adapter_names"], nullptr);
  EXPECT_EQ(written["layer_replication"], json::parse("[[0, 4], [2, 5]]"));
  EXPECT_EQ(written["loftq_config"], json::parse(R"({"loftq_bits": 8, "loftq_iter": 2})"));
  EXPECT_EQ(written.size(), 41u);
  // Written again from the parsed config: the same text.
  EXPECT_EQ(lora_config_to_json_text(lora_config_from_json_text(text)), text);
}

TEST(LoraConfig, PatternOrderIsPreserved) {
  const auto c = parse(R"("rank_pattern": {"zeta": 4, "alpha": 2, "mid": 6},
                          "alpha_pattern": {"z": 1.5, "a": 3},
                          "trainable_token_indices": {"wte": [1], "emb": [2, 3]})");
  const std::vector<std::pair<std::string, int>> ranks = {{"zeta", 4}, {"alpha", 2}, {"mid", 6}};
  EXPECT_EQ(c.rank_pattern, ranks);
  const std::vector<std::pair<std::string, double>> alphas = {{"z", 1.5}, {"a", 3}};
  EXPECT_EQ(c.alpha_pattern, alphas);
  const std::string text = lora_config_to_json_text(c, -1);
  EXPECT_NE(text.find(R"("rank_pattern":{"zeta":4,"alpha":2,"mid":6})"), std::string::npos);
  EXPECT_NE(text.find(R"("alpha_pattern":{"z":1.5,"a":3})"), std::string::npos);
  EXPECT_NE(text.find(R"("trainable_token_indices":{"wte":[1],"emb":[2,3]})"), std::string::npos);
  EXPECT_EQ(lora_config_from_json_text(text), c);
}

TEST(LoraConfig, InitSpellings) {
  const auto niter = parse(R"("init_lora_weights": "pissa_niter_16")").init_lora_weights;
  EXPECT_EQ(niter.kind, Kind::kPissa);
  EXPECT_EQ(niter.niter, 16);
  EXPECT_EQ(niter.spelling, "");  // canonical
  EXPECT_EQ(to_string(niter), "pissa_niter_16");

  const auto olora = parse(R"("init_lora_weights": "OLoRA")");
  EXPECT_EQ(olora.init_lora_weights.kind, Kind::kOlora);
  EXPECT_EQ(olora.init_lora_weights.spelling, "OLoRA");
  EXPECT_NE(lora_config_to_json_text(olora).find("\"init_lora_weights\": \"OLoRA\""),
            std::string::npos);
  EXPECT_EQ(parse(R"("init_lora_weights": "Gaussian")").init_lora_weights.kind, Kind::kGaussian);
  EXPECT_EQ(parse(R"("init_lora_weights": "EVA")").init_lora_weights.kind, Kind::kEva);

  const std::vector<std::pair<std::string, Kind>> exact = {
      {"gaussian", Kind::kGaussian},     {"eva", Kind::kEva},     {"olora", Kind::kOlora},
      {"pissa", Kind::kPissa},           {"corda", Kind::kCorda}, {"loftq", Kind::kLoftq},
      {"orthogonal", Kind::kOrthogonal}, {"mica", Kind::kMica},   {"lora_ga", Kind::kLoraGa}};
  for (const auto& [spelling, kind] : exact) {
    SCOPED_TRACE(spelling);
    const auto w = parse_init_lora_weights(spelling);
    EXPECT_EQ(w.kind, kind);
    EXPECT_EQ(w.niter, 0);
    EXPECT_EQ(to_string(w), spelling);
  }
  EXPECT_EQ(parse(R"("init_lora_weights": true)").init_lora_weights.kind, Kind::kTrue);
  EXPECT_EQ(parse(R"("init_lora_weights": false)").init_lora_weights.kind, Kind::kFalse);
  // A config built in code with the canonical kind compares equal to the parsed one.
  EXPECT_EQ(parse(R"("init_lora_weights": "olora")"),
            (LoraConfig{.init_lora_weights = {.kind = Kind::kOlora}}));
}

TEST(LoraConfig, UnknownInitStringIsConfigError) {
  for (const char* bad : {"kaiming", "PISSA", "pissa_niter_0", "pissa_niter_x", "pissa_niter_",
                          "true", "Orthogonal"}) {
    SCOPED_TRACE(bad);
    const std::string text = doc(std::string("\"init_lora_weights\": \"") + bad + "\"");
    EXPECT_THROW(lora_config_from_json_text(text), ConfigError);
    EXPECT_THROW(parse_init_lora_weights(bad), ConfigError);
  }
  const std::string message = message_of([] { parse_init_lora_weights("kaiming"); });
  for (const char* accepted :
       {"true", "false", "\"gaussian\"", "\"eva\"", "\"olora\"", "\"pissa\"", "\"pissa_niter_<N>\"",
        "\"corda\"", "\"loftq\"", "\"orthogonal\"", "\"mica\"", "\"lora_ga\""}) {
    EXPECT_NE(message.find(accepted), std::string::npos) << accepted << " missing in " << message;
  }
  EXPECT_THROW(parse(R"("init_lora_weights": 1)"), ConfigError);
}

TEST(LoraConfig, UnknownKeysGiveOneWarning) {
  ScopedWarningCapture warnings;
  const auto c = parse(R"("r": 4, "future_option": 1, "another_new_key": {"x": 2})");
  EXPECT_EQ(c.r, 4);
  ASSERT_EQ(warnings.messages().size(), 1u);
  EXPECT_TRUE(warnings.contains(
      "Unexpected keyword arguments ['future_option', 'another_new_key'] for class LoraConfig, "
      "these are ignored."));
}

TEST(LoraConfig, RuntimeConfigIsWarnedAndDropped) {
  ScopedWarningCapture warnings;
  const auto c = parse(R"("runtime_config": {"ephemeral_gpu_offload": true})");
  EXPECT_EQ(c, LoraConfig{});
  ASSERT_EQ(warnings.messages().size(), 1u);
  EXPECT_TRUE(warnings.contains("runtime_config"));
  EXPECT_EQ(lora_config_to_json_text(c).find("runtime_config"), std::string::npos);
}

TEST(LoraConfig, SubConfigUnknownKeysWarn) {
  ScopedWarningCapture warnings;
  const auto c = parse(R"("eva_config": {"rho": 3, "dataset_size": 10})");
  ASSERT_TRUE(c.eva_config.has_value());
  EXPECT_EQ(c.eva_config->rho, 3.0);
  ASSERT_EQ(warnings.messages().size(), 1u);
  EXPECT_TRUE(warnings.contains("['dataset_size']"));
  EXPECT_TRUE(warnings.contains("eva_config"));
}

TEST(LoraConfig, WrongTypesAreConfigErrors) {
  const std::string message =
      message_of([] { parse(R"("r": "eight", "use_dora": 3, "lora_alpha": true)"); });
  EXPECT_NE(message.find("`r`: expected an integer, found string \"eight\""), std::string::npos)
      << message;
  EXPECT_NE(message.find("`use_dora`: expected a boolean, found integer 3"), std::string::npos)
      << message;
  EXPECT_NE(message.find("`lora_alpha`: expected a number, found boolean true"), std::string::npos)
      << message;
  EXPECT_NE(message.find("3 invalid values"), std::string::npos) << message;

  for (const char* bad :
       {R"("r": "eight")", R"("use_dora": 3)", R"("r": 2.5)", R"("r": null)",
        R"("target_modules": 3)", R"("target_modules": ["q", 1])", R"("layers_to_transform": "0")",
        R"("rank_pattern": [1])", R"("rank_pattern": {"q": "big"})",
        R"("modules_to_save": "lm_head")", R"("layer_replication": [[0, 1, 2]])",
        R"("eva_config": 2)", R"("eva_config": {"rho": "x"})", R"("trainable_token_indices": 5)",
        R"("alora_invocation_tokens": [1.5])", R"("megatron_core": null)", R"("task_type": 1)",
        R"("bias": false)", R"("r": 3000000000)"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(parse(bad), ConfigError);
  }
  // An integral float is what Python writes for 8.0 and reads back as a valid rank.
  EXPECT_EQ(parse(R"("r": 8.0)").r, 8);
}

TEST(LoraConfig, TargetParametersStringIsConfigError) {
  const std::string message = message_of([] { parse(R"("target_parameters": "experts.w")"); });
  EXPECT_NE(message.find("`target_parameters` must be a list of strings or None."),
            std::string::npos);
  EXPECT_THROW(parse(R"("target_parameters": "experts.w")"), ConfigError);
}

TEST(LoraConfig, BadTaskTypeIsConfigError) {
  EXPECT_THROW(parse(R"("task_type": "CAUSAL")"), ConfigError);
  EXPECT_NE(
      message_of([] { parse(R"("task_type": "CAUSAL")"); }).find("Invalid task type: 'CAUSAL'"),
      std::string::npos);
  EXPECT_THROW(parse_task_type("causal_lm"), ConfigError);
  for (TaskType t : {TaskType::kSeqCls, TaskType::kSeq2SeqLm, TaskType::kCausalLm,
                     TaskType::kTokenCls, TaskType::kQuestionAns, TaskType::kFeatureExtraction}) {
    EXPECT_EQ(parse_task_type(to_string(t)), t);
    EXPECT_EQ(parse("\"task_type\": \"" + to_string(t) + "\"").task_type, t);
  }
  EXPECT_EQ(to_string(TaskType::kSeq2SeqLm), "SEQ_2_SEQ_LM");
}

TEST(LoraConfig, BadBiasIsConfigError) {
  EXPECT_THROW(parse(R"("bias": "some")"), ConfigError);
  const std::string message = message_of([] { parse(R"("bias": "some")"); });
  EXPECT_NE(message.find("\"lora_only\""), std::string::npos) << message;
  for (Bias b : {Bias::kNone, Bias::kAll, Bias::kLoraOnly}) EXPECT_EQ(parse_bias(to_string(b)), b);
  EXPECT_EQ(to_string(Bias::kLoraOnly), "lora_only");
}

// The sub-configs' enums are parsed once, where the JSON is read: a bad spelling fails there,
// naming the key and every accepted spelling (the C++ types cannot hold one).
TEST(LoraConfig, BadSubConfigEnumsAreConfigErrorsListingTheSpellings) {
  struct Case {
    const char* json;
    const char* message;
  };
  const std::vector<Case> cases = {
      {R"("lora_ga_config": {"direction": "AB"})",
       "`lora_ga_config.direction`: lora_ga_config.direction \"AB\" is not supported; expected one "
       "of \"ArB2r\", "
       "\"A2rBr\", \"ArBr\", \"random\""},
      {R"("lora_ga_config": {"scale": "big"})",
       "`lora_ga_config.scale`: lora_ga_config.scale \"big\" is not supported; expected one of "
       "\"stable\", "
       "\"weight_svd\", \"gd_scale\", \"unit\""},
      {R"("corda_config": {"corda_method": "xyz"})",
       "`corda_config.corda_method`: Invalid corda_method found: xyz, it should be 'ipm' or "
       "'kpm'."},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json);
    EXPECT_THROW(parse(c.json), ConfigError);
    const std::string message = message_of([&] { parse(c.json); });
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
  EXPECT_THROW(peft::parse_corda_method("IPM"), ConfigError);
  for (auto m : {peft::CordaMethod::kIpm, peft::CordaMethod::kKpm})
    EXPECT_EQ(peft::parse_corda_method(to_string(m)), m);
  for (auto d : {peft::LoraGADirection::kArB2r, peft::LoraGADirection::kA2rBr,
                 peft::LoraGADirection::kArBr, peft::LoraGADirection::kRandom}) {
    EXPECT_EQ(peft::parse_lora_ga_direction(to_string(d)), d);
  }
  for (auto s : {peft::LoraGAScale::kStable, peft::LoraGAScale::kWeightSvd,
                 peft::LoraGAScale::kGdScale, peft::LoraGAScale::kUnit}) {
    EXPECT_EQ(peft::parse_lora_ga_scale(to_string(s)), s);
  }
}

TEST(LoraConfig, MissingPeftTypeIsConfigError) {
  EXPECT_THROW(lora_config_from_json_text(R"({"r": 8})"), ConfigError);
  EXPECT_NE(message_of([] { lora_config_from_json_text(R"({"r": 8})"); })
                .find("The LoraConfig config that is trying to be loaded is missing required keys: "
                      "{'peft_type'}."),
            std::string::npos);
  EXPECT_THROW(lora_config_from_json_text(R"({"peft_type": 3})"), ConfigError);
}

// A bad adapter_config.json is a configuration problem: ConfigError, the CLI's exit 2.
TEST(LoraConfig, OtherPeftTypeIsConfigError) {
  EXPECT_THROW(lora_config_from_json_text(R"({"peft_type": "IA3"})"), ConfigError);
  EXPECT_THROW(lora_config_from_json_text(R"({"peft_type": "PREFIX_TUNING"})"), ConfigError);
}

TEST(LoraConfig, InvalidJsonIsConfigError) {
  EXPECT_THROW(lora_config_from_json_text("{\"peft_type\": \"LORA\",", "my/adapter_config.json"),
               ConfigError);
  EXPECT_NE(message_of([] {
              lora_config_from_json_text("{oops", "my/adapter_config.json");
            }).find("my/adapter_config.json"),
            std::string::npos);
  EXPECT_THROW(lora_config_from_json_text("[1, 2]"), ConfigError);
  EXPECT_THROW(lora_config_from_json_text(""), ConfigError);
}

// JSON nested 100,000 deep (in an unknown key, in target_modules) is refused before anything
// recurses over it (printing such a value overflowed the stack).
TEST(LoraConfig, DeeplyNestedJsonIsRefused) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const std::string key : {"target_modules", "some_unknown_key"}) {
    const std::string text = R"({"peft_type": "LORA", ")" + key + "\": " + deep + "}";
    EXPECT_THROW(lora_config_from_json_text(text, "deep/adapter_config.json"), ConfigError);
    EXPECT_NE(message_of([&] {
                lora_config_from_json_text(text, "deep/adapter_config.json");
              }).find("nested more than"),
              std::string::npos);
  }
}

TEST(LoraConfig, AcceptsPeftShapes) {
  auto c = parse(R"("target_modules": ".*\\.q_proj", "exclude_modules": ["lm_head"])");
  EXPECT_EQ(c.target_modules, StrOrList(std::string(".*\\.q_proj")));
  EXPECT_EQ(c.exclude_modules, StrOrList(std::vector<std::string>{"lm_head"}));

  c = parse(R"("target_modules": ["q"], "layers_to_transform": 0, "layers_pattern": "layers")");
  EXPECT_EQ(c.layers_to_transform, (std::variant<int64_t, std::vector<int64_t>>(int64_t{0})));
  EXPECT_EQ(c.layers_pattern, StrOrList(std::string("layers")));
  EXPECT_NO_THROW(c.validate());  // layers_to_transform = 0 counts as given

  c = parse(R"("layers_to_transform": [1, 3], "layers_pattern": ["h", "layers"])");
  EXPECT_EQ(c.layers_to_transform,
            (std::variant<int64_t, std::vector<int64_t>>(std::vector<int64_t>{1, 3})));
  EXPECT_EQ(c.layers_pattern, StrOrList(std::vector<std::string>{"h", "layers"}));

  c = parse(R"("target_modules": null, "layers_pattern": null, "exclude_modules": null)");
  EXPECT_FALSE(c.target_modules || c.layers_pattern || c.exclude_modules);

  c = parse(R"("layer_replication": [[0, 4], [2, 5]], "alora_invocation_tokens": [7, 8])");
  EXPECT_EQ(c.layer_replication, (std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {2, 5}}));
  EXPECT_EQ(c.alora_invocation_tokens, (std::vector<int64_t>{7, 8}));

  c = parse(R"("megatron_config": {"b": 1, "a": [1, 2]}, "use_bdlora": {"nblocks": 2})");
  EXPECT_EQ(c.megatron_config, RawJson{R"({"a":[1,2],"b":1})"});
  const json written = json::parse(lora_config_to_json_text(c));
  EXPECT_EQ(written["megatron_config"], json::parse(R"({"a": [1, 2], "b": 1})"));
  // use_bdlora is PEFT's BdLoraConfig: every field written (asdict), the defaults filled in.
  EXPECT_EQ(written["use_bdlora"],
            json::parse(R"({"match_strict": true, "nblocks": 2, "target_modules_bd_a": null,
                            "target_modules_bd_b": null})"));

  // loftq_config: {} is PEFT's "not set"; a filled one is parsed.
  c = parse(R"("loftq_config": {})");
  EXPECT_FALSE(c.loftq_config.has_value());
  EXPECT_EQ(json::parse(lora_config_to_json_text(c))["loftq_config"], json::object());
  c = parse(R"("init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 8})");
  EXPECT_EQ(c.loftq_config, (LoftQConfig{.loftq_bits = 8, .loftq_iter = 1}));

  c = parse(R"("corda_config": {"cache_file": null, "corda_method": "kpm"},
               "lora_ga_config": {"direction": "random", "scale": "unit", "stable_gamma": 16},
               "arrow_config": {"top_k": 2, "router_temperature": 0.5,
                                "task_adapter_names": null})");
  EXPECT_EQ(c.corda_config->corda_method, peft::CordaMethod::kKpm);
  EXPECT_FALSE(c.corda_config->cache_file.has_value());
  EXPECT_EQ(c.lora_ga_config->direction, peft::LoraGADirection::kRandom);
  EXPECT_EQ(c.lora_ga_config->scale, peft::LoraGAScale::kUnit);
  EXPECT_EQ(c.arrow_config->top_k, 2);
  EXPECT_EQ(c.arrow_config->router_temperature, 0.5);
  EXPECT_TRUE(c.arrow_config->task_adapter_names.empty());
}

TEST(LoraConfig, LoraAlphaKeepsIntOrFloat) {
  EXPECT_NE(lora_config_to_json_text(parse(R"("lora_alpha": 16)")).find("\"lora_alpha\": 16,"),
            std::string::npos);
  EXPECT_NE(lora_config_to_json_text(parse(R"("lora_alpha": 16.5)")).find("\"lora_alpha\": 16.5,"),
            std::string::npos);
  EXPECT_EQ(parse(R"("lora_alpha": 16.5)").lora_alpha, 16.5);
  // 16.0 reads as 16 and is written as 16: the same JSON value, as PEFT's int field.
  EXPECT_EQ(json::parse(lora_config_to_json_text(parse(R"("lora_alpha": 16.0)")))["lora_alpha"],
            16);
}

TEST(LoraConfig, KasaKeyFollowsPeftVersion) {
  // PEFT 0.20.0 had no KaSA and did not write the key; newer and unknown versions do.
  for (const auto& [version, has_key] :
       std::vector<std::pair<std::optional<std::string>, bool>>{{"0.20.0", false},
                                                                {"0.19.1", false},
                                                                {"0.20.1.dev0@abc123", true},
                                                                {"0.21.0", true},
                                                                {"1.0.0", true},
                                                                {std::nullopt, true},
                                                                {"weird", true}}) {
    SCOPED_TRACE(version.value_or("(none)"));
    const LoraConfig c{.peft_version = version};
    const json written = json::parse(lora_config_to_json_text(c));
    EXPECT_EQ(written.contains("kasa_config"), has_key);
    EXPECT_EQ(written.size(), has_key ? 41u : 40u);
  }
  const LoraConfig kasa{.peft_version = "0.20.0", .kasa_config = RawJson{R"({"beta":0.0001})"}};
  EXPECT_TRUE(json::parse(lora_config_to_json_text(kasa)).contains("kasa_config"));
}

TEST(LoraConfig, RawJsonComparesByValue) {
  EXPECT_EQ(RawJson{R"({"a": 1, "b": [1, 2]})"}, RawJson{R"({"b":[1,2],"a":1})"});
  EXPECT_NE(RawJson{R"({"a": 1})"}, RawJson{R"({"a": 2})"});
  EXPECT_NE(RawJson{"not json"}, RawJson{"{}"});
  EXPECT_EQ(RawJson{"not json"}, RawJson{"not json"});
}

struct ValidationCase {
  const char* name;
  LoraConfig config;
  const char* message;  // PEFT's wording, contained in the error
};

TEST(LoraConfig, ValidationErrorsUsePeftMessages) {
  const std::vector<ValidationCase> cases = {
      {"r zero", {.r = 0}, "`r` should be a positive integer value but the value passed is 0"},
      {"rank_pattern negative",
       {.rank_pattern = {{"q", -2}}},
       "`r` should be a positive integer value but the value passed is -2"},
      {"dropout 1", {.lora_dropout = 1.0}, "`lora_dropout` must be in [0, 1), got 1.0"},
      {"dropout negative", {.lora_dropout = -0.1}, "`lora_dropout` must be in [0, 1)"},
      {"str target + layers_to_transform",
       {.target_modules = std::string(".*q"), .layers_to_transform = int64_t{1}},
       "`layers_to_transform` cannot be used when `target_modules` is a str."},
      {"str target + layers_pattern",
       {.target_modules = std::string(".*q"), .layers_pattern = std::string("layers")},
       "`layers_pattern` cannot be used when `target_modules` is a str."},
      {"layers_pattern alone",
       {.target_modules = std::vector<std::string>{"q"},
        .layers_pattern = std::vector<std::string>{"layers"}},
       "When `layers_pattern` is specified, `layers_to_transform` must also be specified."},
      {"loftq without config",
       {.init_lora_weights = {.kind = Kind::kLoftq}},
       "`loftq_config` must be specified when `init_lora_weights` is 'loftq'."},
      {"lora_bias + gaussian",
       {.init_lora_weights = {.kind = Kind::kGaussian}, .lora_bias = true},
       "The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
       "init_lora_weights=gaussian instead."},
      {"lora_bias + dora",
       {.use_dora = true, .lora_bias = true},
       "The argument lora_bias=True is not supported for DoRA, please pass use_dora=False"},
      {"dora + megatron",
       {.megatron_config = RawJson{R"({"tp": 2})"}, .use_dora = true},
       "DoRA does not support megatron_core, please set `use_dora=False`."},
      {"eva rho", {.eva_config = EvaConfig{.rho = 0.5}}, "`rho` must be >= 1.0"},
      {"eva tau", {.eva_config = EvaConfig{.tau = 1.5}}, "`tau` must be between 0.0 and 1.0."},
      {"arrow top_k", {.arrow_config = ArrowConfig{.top_k = 0}}, "arrow_config.top_k"},
      {"arrow temperature",
       {.arrow_config = ArrowConfig{.router_temperature = 0.0}},
       "arrow_config.router_temperature"},
      {"orthogonal odd r",
       {.r = 5, .init_lora_weights = {.kind = Kind::kOrthogonal}},
       "Orthogonal initialization requires the LoRA rank to be even, got 5 instead."},
      {"orthogonal odd rank_pattern",
       {.init_lora_weights = {.kind = Kind::kOrthogonal}, .rank_pattern = {{"q", 3}}},
       "Orthogonal initialization requires the LoRA rank to be even, got 3 instead."},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ScopedWarningCapture quiet;
    EXPECT_THROW(c.config.validate(), ConfigError);
    const std::string message = message_of([&] { c.config.validate(); });
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(LoraConfig, ValidationCollectsAllProblems) {
  const LoraConfig c{.r = 0, .lora_dropout = 2.0, .use_dora = true, .lora_bias = true};
  const std::string message = message_of([&] { c.validate(); });
  EXPECT_NE(message.find("3 problems"), std::string::npos) << message;
  EXPECT_NE(message.find("`r` should be a positive integer"), std::string::npos);
  EXPECT_NE(message.find("`lora_dropout` must be in [0, 1)"), std::string::npos);
  EXPECT_NE(message.find("not supported for DoRA"), std::string::npos);
}

TEST(LoraConfig, ValidationAcceptsValidConfigs) {
  ScopedWarningCapture warnings;
  EXPECT_NO_THROW((LoraConfig{}.validate()));
  EXPECT_NO_THROW(
      (LoraConfig{.r = 4, .init_lora_weights = {.kind = Kind::kOrthogonal}}.validate()));
  EXPECT_NO_THROW(
      (LoraConfig{.init_lora_weights = {.kind = Kind::kFalse}, .lora_bias = true}.validate()));
  EXPECT_NO_THROW((LoraConfig{.target_modules = std::string(".*q")}.validate()));
  EXPECT_NO_THROW(
      (LoraConfig{.init_lora_weights = {.kind = Kind::kLoftq}, .loftq_config = LoftQConfig{}}
           .validate()));
  EXPECT_TRUE(warnings.messages().empty());
}

TEST(LoraConfig, ValidationWarnings) {
  const std::vector<std::pair<LoraConfig, const char*>> cases = {
      {{.init_lora_weights = {.kind = Kind::kEva}},
       "`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config."},
      {{.eva_config = EvaConfig{}},
       "`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'."},
      {{.init_lora_weights = {.kind = Kind::kCorda}},
       "`init_lora_weights` is 'corda' but `corda_config` is not specified."},
      {{.loftq_config = LoftQConfig{}},
       "`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'."},
      {{.alora_invocation_tokens = std::vector<int64_t>{1}}, "CAUSAL_LM"},
      {{.use_rslora = true,
        .init_lora_weights = {.kind = Kind::kPissa},
        .rank_pattern = {{"q", 4}}},
       "Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern"},
  };
  for (const auto& [config, expected] : cases) {
    SCOPED_TRACE(expected);
    ScopedWarningCapture warnings;
    EXPECT_NO_THROW(config.validate());
    ASSERT_EQ(warnings.messages().size(), 1u);
    EXPECT_TRUE(warnings.contains(expected)) << warnings.messages()[0];
  }
  ScopedWarningCapture warnings;
  (LoraConfig{.task_type = TaskType::kCausalLm, .alora_invocation_tokens = std::vector<int64_t>{1}})
      .validate();
  EXPECT_TRUE(warnings.messages().empty());
}

TEST(LoraConfig, SaveAndLoadFiles) {
  test::TempDir dir;
  const LoraConfig c{.task_type = TaskType::kCausalLm,
                     .r = 4,
                     .target_modules = std::vector<std::string>{"q_proj", "v_proj"},
                     .lora_alpha = 16,
                     .rank_pattern = {{"v_proj", 2}}};
  const std::string path = dir.str("adapter_config.json");
  save_lora_config(c, path);
  EXPECT_EQ(load_lora_config(path), c);
  EXPECT_EQ(test::read_file(path), lora_config_to_json_text(c));
  size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path()))
    ++files;
  EXPECT_EQ(files, 1u);  // no temporary file left behind

  save_lora_config(LoraConfig{.r = 2}, path);  // replaces the file
  EXPECT_EQ(load_lora_config(path).r, 2);

  const std::string missing = dir.str("nope/adapter_config.json");
  EXPECT_THROW(load_lora_config(missing), FormatError);
  EXPECT_NE(message_of([&] { load_lora_config(missing); }).find(missing), std::string::npos);
  EXPECT_THROW(load_lora_config(dir.str()), FormatError);  // a directory
  // Writing goes through the one atomic write path, whose errors are peft::Error naming the path.
  const std::string unwritable = dir.str("no/such/dir/adapter_config.json");
  EXPECT_THROW(save_lora_config(c, unwritable), peft::Error);
  EXPECT_NE(message_of([&] { save_lora_config(c, unwritable); }).find(unwritable),
            std::string::npos);

  // load_lora_config validates; from_json_text alone does not.
  const std::string invalid = dir.str("invalid.json");
  test::write_file(invalid, doc(R"("r": 0)"));
  EXPECT_THROW(load_lora_config(invalid), ConfigError);
  EXPECT_NO_THROW(lora_config_from_json_text(doc(R"("r": 0)")));
  test::write_file(invalid, "{not json");
  EXPECT_THROW(load_lora_config(invalid), ConfigError);
}

}  // namespace
}  // namespace peft
