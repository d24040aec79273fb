// The per-layer adapter settings of a LoraConfig for one target (private to src/peft_model/): rank
// and alpha after rank_pattern / alpha_pattern, and the config's per-layer fields.
#pragma once

#include <string>

#include "peft/config.h"
#include "peft/lora/layer.h"
#include "peft/targeting.h"

namespace peft::detail {

// `name`: the module's full name, or for target_parameters the parameter's full name (PEFT matches
// the patterns against it).
inline nn::AdapterSettings adapter_settings_for(const LoraConfig& config, const std::string& name) {
  const ResolvedRank rr = resolve_rank(config, name);
  nn::AdapterSettings s;
  s.r = rr.r;
  s.lora_alpha = rr.lora_alpha;
  s.use_rslora = config.use_rslora;
  s.lora_dropout = config.lora_dropout;
  s.lora_bias = config.lora_bias;
  s.init_lora_weights = config.init_lora_weights;
  s.use_dora = config.use_dora;
  s.alora_invocation_tokens = config.alora_invocation_tokens;
  s.arrow_config = config.arrow_config;
  s.use_bdlora = config.use_bdlora;
  s.use_qalora = config.use_qalora;
  s.qalora_group_size = config.qalora_group_size;
  s.velora_config = config.velora_config;
  s.monteclora_config = config.monteclora_config;
  s.target_name = name;
  s.config = std::make_shared<const LoraConfig>(config);
  s.lora_ga_config = config.lora_ga_config;
  s.loftq_config = config.loftq_config;
  return s;
}

}  // namespace peft::detail
