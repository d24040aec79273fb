// adapter_config.json <-> LoraConfig: every key PEFT writes is mapped in one table (kLoraFields
// below); the sub-configs have their own small tables built the same way. The value readers /
// writers are json_io.cpp, the enum spellings enums.cpp, validation validate.cpp.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "json_io.h"
#include "peft/io/atomic_write.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"

namespace peft {
namespace detail {

const auto kLoftqFields = std::to_array({
    PEFT_JSON_FIELD(LoftQConfig, loftq_bits),
    PEFT_JSON_FIELD(LoftQConfig, loftq_iter),
});

const auto kEvaFields = std::to_array({
    PEFT_JSON_FIELD(EvaConfig, rho),
    PEFT_JSON_FIELD(EvaConfig, tau),
    PEFT_JSON_FIELD(EvaConfig, use_label_mask),
    PEFT_JSON_FIELD(EvaConfig, label_mask_value),
    PEFT_JSON_FIELD(EvaConfig, whiten),
    PEFT_JSON_FIELD(EvaConfig, adjust_scaling_factors),
});

const auto kCordaFields = std::to_array({
    PEFT_JSON_FIELD(CordaConfig, cache_file),
    PEFT_JSON_FIELD(CordaConfig, covariance_file),
    PEFT_JSON_FIELD(CordaConfig, corda_method),
    PEFT_JSON_FIELD(CordaConfig, verbose),
    PEFT_JSON_FIELD(CordaConfig, use_float16_for_covariance),
    PEFT_JSON_FIELD(CordaConfig, prune_temporary_fields),
});

const auto kLoraGaFields = std::to_array({
    PEFT_JSON_FIELD(LoraGAConfig, direction),
    PEFT_JSON_FIELD(LoraGAConfig, scale),
    PEFT_JSON_INT_FIELD(LoraGAConfig, stable_gamma),
});

// PEFT's asdict() also writes the non-init adapter name lists (None until Arrow fills them).
OJson write_names_or_null(const std::vector<std::string>& names) {
  return names.empty() ? OJson(nullptr) : write_value(names);
}

void read_names_or_null(Reader& rd, const OJson& v, const std::string& k,
                        std::vector<std::string>& out) {
  out.clear();
  if (!v.is_null()) read_value(rd, v, k, out);
}

const auto kArrowFields = std::to_array({
    PEFT_JSON_FIELD(ArrowConfig, top_k),
    PEFT_JSON_FIELD(ArrowConfig, router_temperature),
    PEFT_JSON_FIELD(ArrowConfig, use_gks),
    PEFT_JSON_FIELD(ArrowConfig, rng_seed),
    FieldSpec<ArrowConfig>{
        "task_adapter_names",
        [](Reader& rd, const OJson& v, const std::string& k, ArrowConfig& s) {
          read_names_or_null(rd, v, k, s.task_adapter_names);
        },
        [](const ArrowConfig& s) { return write_names_or_null(s.task_adapter_names); }},
    FieldSpec<ArrowConfig>{
        "gks_adapter_names",
        [](Reader& rd, const OJson& v, const std::string& k, ArrowConfig& s) {
          read_names_or_null(rd, v, k, s.gks_adapter_names);
        },
        [](const ArrowConfig& s) { return write_names_or_null(s.gks_adapter_names); }},
});

const auto kBdLoraFields = std::to_array({
    PEFT_JSON_FIELD(BdLoraConfig, target_modules_bd_a),
    PEFT_JSON_FIELD(BdLoraConfig, target_modules_bd_b),
    PEFT_JSON_FIELD(BdLoraConfig, nblocks),
    PEFT_JSON_FIELD(BdLoraConfig, match_strict),
});

const auto kVeloraFields = std::to_array({
    PEFT_JSON_FIELD(VeloraConfig, num_groups),
    PEFT_JSON_FIELD(VeloraConfig, scale),
    PEFT_JSON_FIELD(VeloraConfig, init_type),
});

const auto kMontecloraFields = std::to_array({
    PEFT_JSON_FIELD(MontecloraConfig, num_samples),
    PEFT_JSON_FIELD(MontecloraConfig, use_entropy),
    PEFT_JSON_FIELD(MontecloraConfig, dirichlet_prior),
    PEFT_JSON_FIELD(MontecloraConfig, sample_scaler),
    PEFT_JSON_FIELD(MontecloraConfig, kl_loss_weight),
    PEFT_JSON_FIELD(MontecloraConfig, buffer_size),
});

void read_value(Reader& rd, const OJson& v, const std::string& key, LoftQConfig& out) {
  read_struct(rd, v, key, kLoftqFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, EvaConfig& out) {
  read_struct(rd, v, key, kEvaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, CordaConfig& out) {
  read_struct(rd, v, key, kCordaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, LoraGAConfig& out) {
  read_struct(rd, v, key, kLoraGaFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, ArrowConfig& out) {
  read_struct(rd, v, key, kArrowFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, BdLoraConfig& out) {
  read_struct(rd, v, key, kBdLoraFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, VeloraConfig& out) {
  read_struct(rd, v, key, kVeloraFields, out);
}
void read_value(Reader& rd, const OJson& v, const std::string& key, MontecloraConfig& out) {
  read_struct(rd, v, key, kMontecloraFields, out);
}

OJson write_value(const LoftQConfig& c) { return write_struct(c, kLoftqFields); }
OJson write_value(const EvaConfig& c) { return write_struct(c, kEvaFields); }
OJson write_value(const CordaConfig& c) { return write_struct(c, kCordaFields); }
OJson write_value(const LoraGAConfig& c) { return write_struct(c, kLoraGaFields); }
OJson write_value(const ArrowConfig& c) { return write_struct(c, kArrowFields); }
OJson write_value(const BdLoraConfig& c) { return write_struct(c, kBdLoraFields); }
OJson write_value(const VeloraConfig& c) { return write_struct(c, kVeloraFields); }
OJson write_value(const MontecloraConfig& c) { return write_struct(c, kMontecloraFields); }

}  // namespace detail

namespace {

using namespace detail;  // the readers, writers and FieldSpec of json_io.h

// The 41 keys of adapter_config.json (PEFT 0.20.1.dev0), in LoraConfig declaration order.
const auto kLoraFields = std::to_array({
    PEFT_JSON_FIELD(LoraConfig, peft_type),  // checked before the table is used
    PEFT_JSON_FIELD(LoraConfig, task_type),
    PEFT_JSON_FIELD(LoraConfig, base_model_name_or_path),
    PEFT_JSON_FIELD(LoraConfig, revision),
    PEFT_JSON_FIELD(LoraConfig, inference_mode),
    PEFT_JSON_FIELD(LoraConfig, auto_mapping),
    PEFT_JSON_FIELD(LoraConfig, peft_version),
    PEFT_JSON_FIELD(LoraConfig, r),
    PEFT_JSON_FIELD(LoraConfig, target_modules),
    PEFT_JSON_FIELD(LoraConfig, exclude_modules),
    PEFT_JSON_INT_FIELD(LoraConfig, lora_alpha),
    PEFT_JSON_FIELD(LoraConfig, lora_dropout),
    PEFT_JSON_FIELD(LoraConfig, fan_in_fan_out),
    PEFT_JSON_FIELD(LoraConfig, bias),
    PEFT_JSON_FIELD(LoraConfig, use_rslora),
    PEFT_JSON_FIELD(LoraConfig, modules_to_save),
    PEFT_JSON_FIELD(LoraConfig, init_lora_weights),
    PEFT_JSON_FIELD(LoraConfig, layers_to_transform),
    PEFT_JSON_FIELD(LoraConfig, layers_pattern),
    PEFT_JSON_FIELD(LoraConfig, rank_pattern),
    PEFT_JSON_FIELD(LoraConfig, alpha_pattern),
    PEFT_JSON_FIELD(LoraConfig, megatron_config),
    PEFT_JSON_FIELD(LoraConfig, megatron_core),
    PEFT_JSON_FIELD(LoraConfig, trainable_token_indices),
    // PEFT's default is {} (an empty dict), held as nullopt: {} in -> nullopt -> {} out.
    FieldSpec<LoraConfig>{"loftq_config",
                          [](Reader& rd, const OJson& v, const std::string& k, LoraConfig& s) {
                            if (v.is_null() || (v.is_object() && v.empty())) {
                              s.loftq_config.reset();
                            } else {
                              read_value(rd, v, k, s.loftq_config);
                            }
                          },
                          [](const LoraConfig& s) {
                            return s.loftq_config ? write_value(*s.loftq_config) : OJson::object();
                          }},
    PEFT_JSON_FIELD(LoraConfig, eva_config),
    PEFT_JSON_FIELD(LoraConfig, corda_config),
    PEFT_JSON_FIELD(LoraConfig, lora_ga_config),
    PEFT_JSON_FIELD(LoraConfig, use_dora),
    PEFT_JSON_FIELD(LoraConfig, velora_config),
    PEFT_JSON_FIELD(LoraConfig, alora_invocation_tokens),
    PEFT_JSON_FIELD(LoraConfig, use_qalora),
    PEFT_JSON_FIELD(LoraConfig, qalora_group_size),
    PEFT_JSON_FIELD(LoraConfig, monteclora_config),
    PEFT_JSON_FIELD(LoraConfig, layer_replication),
    PEFT_JSON_FIELD(LoraConfig, lora_bias),
    // A bare regex string is the shape users get wrong; PEFT raises its own TypeError for it.
    FieldSpec<LoraConfig>{"target_parameters",
                          [](Reader& rd, const OJson& v, const std::string& k, LoraConfig& s) {
                            if (v.is_string()) {
                              rd.error("`target_parameters` must be a list of strings or None.");
                            } else {
                              read_value(rd, v, k, s.target_parameters);
                            }
                          },
                          [](const LoraConfig& s) { return write_value(s.target_parameters); }},
    PEFT_JSON_FIELD(LoraConfig, use_bdlora),
    PEFT_JSON_FIELD(LoraConfig, arrow_config),
    PEFT_JSON_FIELD(LoraConfig, kasa_config),
    PEFT_JSON_FIELD(LoraConfig, ensure_weight_tying),
});
static_assert(kLoraFields.size() == 41);

#undef PEFT_JSON_FIELD
#undef PEFT_JSON_INT_FIELD

// PEFT <= 0.20.0 had no KaSA and so never wrote `kasa_config`. Returns false when peft_version
// names such a release ("0.20.0", "0.19.1", "0.20.0rc1"); true for newer, dev ("0.20.1.dev0@abc")
// and unknown versions.
bool version_writes_kasa(const std::optional<std::string>& peft_version) {
  if (!peft_version) return true;
  std::array<long, 3> parts{};
  const char* p = peft_version->c_str();
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(*p))) return true;
    char* end = nullptr;
    parts[i] = std::strtol(p, &end, 10);
    p = end;
    if (i + 1 < parts.size()) {
      if (*p != '.') return true;
      ++p;
    }
  }
  return parts > std::array<long, 3>{0, 20, 0};
}

}  // namespace

bool RawJson::operator==(const RawJson& other) const {
  if (text == other.text) return true;
  try {
    return nlohmann::json::parse(text) == nlohmann::json::parse(other.text);
  } catch (const nlohmann::json::exception&) {
    return false;  // unequal texts of which one is not JSON cannot hold the same value
  }
}

LoraConfig lora_config_from_json_text(const std::string& json_text, const std::string& source) {
  // A bad adapter_config.json is a configuration error (the CLI's exit 2).
  const OJson root =
      io::parse_ordered_json(json_text, kConfigComponent, source, io::JsonRole::kConfig);
  if (!root.is_object()) {
    throw ConfigError(kConfigComponent,
                      source + ": expected a JSON object, found " + describe(root));
  }

  const auto peft_type = root.find("peft_type");
  if (peft_type == root.end()) {
    throw ConfigError(kConfigComponent,
                      "The LoraConfig config that is trying to be loaded is missing required keys: "
                      "{'peft_type'}. (in " +
                          source + ")");
  }
  if (!peft_type->is_string()) {
    throw ConfigError(kConfigComponent,
                      source + ": `peft_type`: expected a string, found " + describe(*peft_type));
  }
  if (peft_type->get<std::string>() != "LORA") {
    throw ConfigError(kConfigComponent,
                      source + ": peft_type \"" + peft_type->get<std::string>() +
                          "\" is not supported; expected \"LORA\" (hint: peft.cpp implements "
                          "LoRA and its variants only)");
  }

  Reader rd(source);
  LoraConfig config;
  std::vector<std::string> unknown;
  for (const auto& item : root.items()) {
    if (item.key() == "runtime_config") {
      warn(kConfigComponent,
           source +
               ": `runtime_config` is ignored: runtime settings are never saved with an adapter");
      continue;
    }
    const auto field =
        std::find_if(kLoraFields.begin(), kLoraFields.end(),
                     [&](const FieldSpec<LoraConfig>& f) { return item.key() == f.key; });
    if (field == kLoraFields.end()) {
      unknown.push_back(item.key());
    } else {
      field->read(rd, item.value(), item.key(), config);
    }
  }
  if (!unknown.empty()) {
    warn(kConfigComponent,
         "Unexpected keyword arguments " + python_list(unknown) +
             " for class LoraConfig, these are ignored. This probably means that you're loading a "
             "configuration file that was saved using a higher version of the library and "
             "additional "
             "parameters have been introduced since. (in " +
             source + ")");
  }
  rd.throw_if_errors();
  return config;
}

std::string lora_config_to_json_text(const LoraConfig& config, int indent) {
  OJson root = write_struct(config, kLoraFields);
  if (!config.kasa_config && !version_writes_kasa(config.peft_version)) root.erase("kasa_config");
  // ensure_ascii matches Python's json.dumps default, so non-ASCII names are written as \uXXXX like
  // PEFT does.
  return root.dump(indent, ' ', /*ensure_ascii=*/true);
}

LoraConfig load_lora_config(const std::string& path) {
  LoraConfig config = lora_config_from_json_text(io::read_file(path, kConfigComponent), path);
  config.validate();
  return config;
}

void save_lora_config(const LoraConfig& config, const std::string& path) {
  io::write_file_atomically(path, lora_config_to_json_text(config, 2), kConfigComponent);
}

}  // namespace peft
