// Config sizes checked before the model is built.
#include "size_check.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/models/model.h"

namespace peft::models::detail {
namespace {

// The first of `keys` that holds a positive integer, else 0.
long double field(const nlohmann::json& config, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    const auto it = config.find(k);
    if (it != config.end() && it->is_number_integer() && it->get<int64_t>() > 0)
      return static_cast<long double>(it->get<int64_t>());
  }
  return 0;
}

long double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;  // unknown: no bound
  return static_cast<long double>(pages) * static_cast<long double>(page);
}

std::string gib(long double bytes) {
  std::ostringstream os;
  os.precision(3);
  os << bytes / (1024.0L * 1024.0L * 1024.0L) << " GiB";
  return os.str();
}

}  // namespace

long double parameters_lower_bound(const nlohmann::json& config) {
  if (!config.is_object()) return 0;
  const long double vocab = field(config, {"vocab_size"});
  const long double hidden = field(config, {"hidden_size", "n_embd", "d_model"});
  const long double layers = field(config, {"num_hidden_layers", "n_layer"});
  const long double heads = field(config, {"num_attention_heads", "n_head"});
  const long double head_dim = field(config, {"head_dim"});
  // q_proj and o_proj: hidden x (heads x head_dim) when head_dim is given, else hidden x hidden.
  const long double attention =
      2 * hidden * (heads > 0 && head_dim > 0 ? heads * head_dim : hidden);
  // The MLP: at least two hidden x intermediate matrices, per expert for a mixture of experts
  // (the smaller of a dense and a sparse layer, since some layers may be either).
  const long double inter = field(config, {"intermediate_size", "n_inner"});
  const long double experts = field(config, {"num_local_experts", "num_experts"});
  const long double moe_inter = field(config, {"moe_intermediate_size"});
  long double mlp = inter;
  if (experts > 0) {
    const long double sparse = experts * (moe_inter > 0 ? moe_inter : inter);
    mlp = inter > 0 && moe_inter > 0 ? std::min(inter, sparse) : sparse;
  }
  // Learned position embeddings (GPT-2's n_positions; BERT's max_position_embeddings).
  const long double positions = field(config, {"n_positions"});
  return vocab * hidden + positions * hidden + layers * (attention + 2 * hidden * mlp);
}

void check_config_size(const nlohmann::json& config, std::optional<uint64_t> checkpoint_elements) {
  const long double params = parameters_lower_bound(config);
  const long double bytes = params * 4;  // built in float32
  const long double memory = physical_memory_bytes();
  PEFT_CHECK(memory == 0 || bytes <= memory, ConfigError, "config.json",
             "the config describes at least "
                 << static_cast<double>(params) << " parameters (" << gib(bytes)
                 << " in float32), more than this machine's " << gib(memory)
                 << " of memory (hint: check vocab_size, hidden_size, intermediate_size, "
                    "the number of experts and num_hidden_layers)");
  if (checkpoint_elements) {
    // Quantized checkpoints pack two 4-bit values per byte; tied weights are stored once.
    const long double held = static_cast<long double>(*checkpoint_elements);
    PEFT_CHECK(params <= 4 * held + 1e6L, ConfigError, "config.json",
               "the config describes at least "
                   << static_cast<double>(params) << " parameters but the checkpoint holds "
                   << *checkpoint_elements
                   << " values; expected a config.json that matches its weights (hint: check "
                      "num_hidden_layers, hidden_size and vocab_size)");
  }
}

}  // namespace peft::models::detail

namespace peft::models {

double config_parameters_lower_bound(const std::string& config_json_text) {
  const nlohmann::json config =
      io::parse_json(config_json_text, "config.json", "config.json", io::JsonRole::kConfig);
  detail::check_config_size(config);
  return static_cast<double>(detail::parameters_lower_bound(config));
}

std::optional<int64_t> max_position_embeddings(const PretrainedModel& model) {
  if (model.config_json().empty()) return std::nullopt;
  const nlohmann::json config =
      io::parse_json(model.config_json(), "config.json", "config.json", io::JsonRole::kConfig);
  const long double n = detail::field(config, {"max_position_embeddings", "n_positions"});
  if (n <= 0) return std::nullopt;
  return static_cast<int64_t>(n);
}

}  // namespace peft::models
