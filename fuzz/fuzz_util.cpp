// Shared by the fuzz targets: the target table, input splitting, silenced warnings.
#include "fuzz_target.h"
#include "peft/error.h"

namespace peft::fuzz {

const std::vector<std::pair<std::string, Target>>& targets() {
  static const std::vector<std::pair<std::string, Target>> all = {
      {"safetensors", safetensors},       {"lora_config", lora_config},
      {"tokenizer_json", tokenizer_json}, {"sentencepiece", sentencepiece},
      {"chat_template", chat_template},   {"train_jsonl", train_jsonl},
      {"bnb_state", bnb_state},           {"gptq_state", gptq_state},
      {"model_config", model_config},     {"launch_env", launch_env},
  };
  return all;
}

void silence_warnings() {
  static const bool once = [] {
    set_warning_sink([](const std::string&, const std::string&) {});
    return true;
  }();
  (void)once;
}

std::pair<std::string_view, std::string_view> split2(const uint8_t* data, size_t size) {
  const auto* text = reinterpret_cast<const char*>(data);
  if (size < 4) return {std::string_view(text, size), {}};
  size_t n = 0;
  for (int i = 3; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 4) n = size - 4;
  return {std::string_view(text + 4, n), std::string_view(text + 4 + n, size - 4 - n)};
}

}  // namespace peft::fuzz
