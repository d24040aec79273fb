// Refuses a config.json whose sizes would allocate absurd amounts before anything is allocated
// (private to the model zoo).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>

namespace peft::models::detail {

// A lower bound of the parameters the config describes (embeddings plus each layer's attention
// projections), from the fields every supported family shares; fields that are absent or not
// positive integers count as 0 (the family's reader reports them).
long double parameters_lower_bound(const nlohmann::json& config);

// ConfigError when the lower bound, in float32, exceeds this machine's physical memory, or when a
// checkpoint is given and the config asks for far more parameters than it holds (e.g.
// num_hidden_layers: 3000 on a 4-layer checkpoint).
void check_config_size(const nlohmann::json& config,
                       std::optional<uint64_t> checkpoint_elements = std::nullopt);

}  // namespace peft::models::detail
