// LoraConfig and its sub-configs: every field of PEFT 0.20's LoraConfig
// (src/peft/tuners/lora/config.py), parsed from / written to adapter_config.json with PEFT's keys
// (src/config.cpp holds the JSON table).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace peft {

// Every member below has a default member initializer, `{}` included: GCC's
// -Wmissing-field-initializers (in -Wextra) flags designated initializers such as
// LoraConfig{.r = 16} that skip a member without one.

// A JSON value kept verbatim (compact JSON text) for sub-configs whose feature has no C++
// counterpart yet (megatron_config, velora_config, ...). Compared by parsed value, so formatting
// does not matter.
struct RawJson {
  std::string text{};  // compact JSON, e.g. {"num_groups":64}
  bool operator==(const RawJson& other) const;
};

// target_modules / exclude_modules / layers_pattern: PEFT accepts a single string (regex, full
// match) or a list. Lists keep the order given; PEFT turns them into sets, so order never changes
// semantics.
using StrOrList = std::variant<std::string, std::vector<std::string>>;

enum class TaskType { kSeqCls, kSeq2SeqLm, kCausalLm, kTokenCls, kQuestionAns, kFeatureExtraction };
enum class Bias { kNone, kAll, kLoraOnly };

// init_lora_weights: bool or one of PEFT's strings. `spelling` keeps the string as given when it
// differs from the canonical one ("OLoRA"); empty means canonical ("olora", "pissa_niter_4"), so
// configs built in code and configs read from JSON compare equal and round-trip exactly.
// `niter` is N of "pissa_niter_N" (0 = full SVD).
struct InitLoraWeights {
  enum class Kind {
    kTrue,
    kFalse,
    kGaussian,
    kEva,
    kOlora,
    kPissa,
    kCorda,
    kLoftq,
    kOrthogonal,
    kMica,
    kLoraGa
  };
  Kind kind = Kind::kTrue;
  int niter = 0;
  std::string spelling{};  // empty for the bools
  bool operator==(const InitLoraWeights&) const = default;
  // The inits that change the base weights too: PiSSA, OLoRA, CorDA and LoRA-GA (the residual W - s
  // B0 A0) and LoftQ (the quantized Q). Their adapters need that base: `peft init` writes it,
  // loading warns.
  bool mutates_base() const;
  // The inits that learn from data (a forward pass over batches): EVA, CorDA and LoRA-GA.
  bool needs_data() const;
};

struct LoftQConfig {
  int loftq_bits = 4;  // bits of the quantized base (4 = nf4, 8 = int8)
  int loftq_iter = 1;  // alternating quantize / SVD iterations
  bool operator==(const LoftQConfig&) const = default;
};

struct EvaConfig {
  double rho = 2.0;                    // max rank redistribution factor (>= 1)
  double tau = 0.99;                   // cosine-similarity convergence threshold in [0, 1]
  bool use_label_mask = true;          // drop tokens whose label == label_mask_value
  int64_t label_mask_value = -100;     //
  bool whiten = false;                 // divide components by sqrt(singular values)
  bool adjust_scaling_factors = true;  // alpha <- alpha * new_r / r after redistribution
  bool operator==(const EvaConfig&) const = default;
};

// CorDA's choice of components: "ipm" (instruction-previewed) keeps the largest, "kpm"
// (knowledge-preserved) the smallest.
enum class CordaMethod { kIpm, kKpm };

struct CordaConfig {
  std::optional<std::string> cache_file{};       // where the decomposition is cached
  std::optional<std::string> covariance_file{};  // where the collected covariance is cached
  CordaMethod corda_method = CordaMethod::kIpm;  // "ipm" | "kpm"
  bool verbose = false;
  bool use_float16_for_covariance = false;
  bool prune_temporary_fields = true;
  bool operator==(const CordaConfig&) const = default;
};

// LoRA-GA's singular directions for A and B out of the gradient's top 2r: "ArB2r" (A the first r, B
// the next r), "A2rBr", "ArBr" (interleaved), "random".
enum class LoraGADirection { kArB2r, kA2rBr, kArBr, kRandom };
// LoRA-GA's scale of the factors: "stable" (by out^(1/4) / sqrt(gamma)), "weight_svd", "gd_scale",
// "unit".
enum class LoraGAScale { kStable, kWeightSvd, kGdScale, kUnit };

struct LoraGAConfig {
  LoraGADirection direction = LoraGADirection::kArB2r;  // "ArB2r" | "A2rBr" | "ArBr" | "random"
  LoraGAScale scale = LoraGAScale::kStable;  // "stable" | "weight_svd" | "gd_scale" | "unit"
  double stable_gamma = 16;
  bool operator==(const LoraGAConfig&) const = default;
};

struct ArrowConfig {
  int top_k = 3;
  double router_temperature = 1.0;
  bool use_gks = false;
  std::optional<int64_t> rng_seed{};
  std::vector<std::string> task_adapter_names{};
  std::vector<std::string> gks_adapter_names{};
  bool operator==(const ArrowConfig&) const = default;
};

// VeLoRA (velora_config): lora_A's backward keeps one scalar per group of input features, rebuilt
// from a unit vector; init_type "batch_average" (refreshed every training step),
// "batch_average_once" or "random".
struct VeloraConfig {
  int num_groups = 64;
  double scale = 1.0;
  std::string init_type = "batch_average";
  bool operator==(const VeloraConfig&) const = default;
};

// MonteCLoRA (monteclora_config): Monte Carlo perturbation of lora_A while training, with a KL +
// entropy regulariser the trainer adds to the loss.
struct MontecloraConfig {
  int num_samples = 8;
  bool use_entropy = false;
  double dirichlet_prior = 0.1;
  double sample_scaler = 1e-4;
  double kl_loss_weight = 1e-5;
  int buffer_size = 150;
  bool operator==(const MontecloraConfig&) const = default;
};

// BD-LoRA (use_bdlora): block-diagonal lora_A for modules whose full name contains a pattern of
// target_modules_bd_a, block-diagonal lora_B for target_modules_bd_b (plain substring match, as
// PEFT), each with `nblocks` diagonal blocks stored packed as (out, in / nblocks). With
// match_strict every targeted module must match one list.
struct BdLoraConfig {
  std::optional<std::vector<std::string>> target_modules_bd_a{};
  std::optional<std::vector<std::string>> target_modules_bd_b{};
  int nblocks = 1;
  bool match_strict = true;
  bool operator==(const BdLoraConfig&) const = default;
};

// trainable_token_indices: a list (applies to the input embedding) or {module suffix: indices}.
using TrainableTokenIndices =
    std::variant<std::vector<int64_t>, std::vector<std::pair<std::string, std::vector<int64_t>>>>;

struct LoraConfig {
  // --- PeftConfig base fields ---
  std::string peft_type = "LORA";       // always "LORA"
  std::optional<TaskType> task_type{};  // SEQ_CLS, CAUSAL_LM, ...; None = plain PeftModel
  std::optional<std::string>
      base_model_name_or_path{};          // filled by get_peft_model from the model's name
  std::optional<std::string> revision{};  // base model revision
  bool inference_mode = false;            // written as true in saved files
  std::optional<RawJson>
      auto_mapping{};  // {"base_model_class", "parent_library"} when task_type is None
  std::optional<std::string> peft_version{};  // version that wrote the file

  // --- LoraConfig fields, declaration order ---
  int r = 8;  // rank (> 0)
  std::optional<StrOrList>
      target_modules{};  // list: exact or ".name" suffix; str: regex full match; "all-linear"
  std::optional<StrOrList> exclude_modules{};  // same rules as target_modules
  double lora_alpha = 8;                       // scaling numerator (int in PEFT; kept as number)
  double lora_dropout = 0.0;                   // dropout on the LoRA branch input
  bool fan_in_fan_out = false;                 // weight stored (in, out) (GPT-2 Conv1D)
  Bias bias = Bias::kNone;                     // which biases train and are saved
  bool use_rslora = false;                     // scaling alpha/sqrt(r) instead of alpha/r
  std::optional<std::vector<std::string>> modules_to_save{};  // fully trained + saved modules
  InitLoraWeights init_lora_weights{};  // default true (Kaiming-uniform A, zero B)
  std::optional<std::variant<int64_t, std::vector<int64_t>>> layers_to_transform{};
  std::optional<StrOrList> layers_pattern{};  // name of the layer ModuleList ("layers", "h")
  std::vector<std::pair<std::string, int>>
      rank_pattern{};  // regex -> r, first match in this order wins
  std::vector<std::pair<std::string, double>> alpha_pattern{};  // regex -> alpha, first match wins
  std::optional<RawJson> megatron_config{};
  std::string megatron_core = "megatron.core";
  std::optional<TrainableTokenIndices> trainable_token_indices{};
  std::optional<LoftQConfig> loftq_config{};  // PEFT default {} (written as {} when absent)
  std::optional<EvaConfig> eva_config{};
  std::optional<CordaConfig> corda_config{};
  std::optional<LoraGAConfig> lora_ga_config{};
  bool use_dora = false;
  std::optional<VeloraConfig> velora_config{};
  std::optional<std::vector<int64_t>> alora_invocation_tokens{};
  bool use_qalora = false;
  int qalora_group_size = 16;
  std::optional<MontecloraConfig> monteclora_config{};
  std::optional<std::vector<std::pair<int64_t, int64_t>>>
      layer_replication{};  // [start, end) ranges
  bool lora_bias = false;   // bias on lora_B
  std::optional<std::vector<std::string>>
      target_parameters{};  // LoRA on nn.Parameters (ParamWrapper)
  std::optional<BdLoraConfig> use_bdlora{};
  std::optional<ArrowConfig> arrow_config{};
  std::optional<RawJson> kasa_config{};
  bool ensure_weight_tying = false;

  bool operator==(const LoraConfig&) const = default;

  // Runs every check PEFT's __post_init__ runs; throws ConfigError naming the field and value.
  // Warnings (PEFT's UserWarnings) go to the warning sink.
  void validate() const;
};

// JSON edge (adapter_config.json). from_json warns once listing every unknown key; missing
// "peft_type" or a wrong type raises ConfigError naming the key. to_json writes all 41 keys that
// PEFT writes, sorted. from_json only parses (types, enum spellings); it does not run validate().
// load_lora_config does both. to_json writes the config as it is (the save code sets inference_mode
// = true first). Keys are sorted as PEFT's json.dumps(sort_keys=True) does, except inside
// rank_pattern / alpha_pattern / trainable_token_indices, which keep their order (the first
// matching pattern wins). `kasa_config` is left out when it is null and peft_version names a
// release up to 0.20.0, which did not have it, so the files of those versions round-trip byte for
// byte.
LoraConfig lora_config_from_json_text(const std::string& json_text,
                                      const std::string& source = "adapter_config.json");
std::string lora_config_to_json_text(const LoraConfig& config, int indent = 2);
LoraConfig load_lora_config(const std::string& path);  // reads and validates a file
void save_lora_config(const LoraConfig& config, const std::string& path);  // atomic write

std::string to_string(TaskType t);
std::string to_string(Bias b);
std::string to_string(const InitLoraWeights& w);  // "true", "false", or the string PEFT writes
std::string to_string(CordaMethod m);
std::string to_string(LoraGADirection d);
std::string to_string(LoraGAScale s);

// The string edge of the enums (JSON, CLI): an unknown spelling throws ConfigError listing every
// accepted one.
TaskType parse_task_type(const std::string& s);  // "CAUSAL_LM", ...
Bias parse_bias(const std::string& s);           // "none" | "all" | "lora_only"
// PEFT's string values only ("gaussian", "OLoRA", "pissa_niter_16", ...); the bools are JSON
// true/false.
InitLoraWeights parse_init_lora_weights(const std::string& s);
CordaMethod parse_corda_method(const std::string& s);  // "ipm" | "kpm"
LoraGADirection parse_lora_ga_direction(const std::string& s);
LoraGAScale parse_lora_ga_scale(const std::string& s);

}  // namespace peft
