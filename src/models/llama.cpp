// Placeholder until the family lands: the registry lists it, construction reports it as not yet available.
#include "families.h"
#include "peft/error.h"

namespace peft::models::detail {

std::shared_ptr<PretrainedModel> make_llama(const nlohmann::json& config) {
  throw UnsupportedError("load_pretrained", "model_type \"" + config.value("model_type", std::string("?")) +
                                                "\" is registered but its implementation is not built yet");
}

}  // namespace peft::models::detail
