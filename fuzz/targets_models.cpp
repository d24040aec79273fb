// Fuzz target of the model zoo's config.json readers (every family: llama, mistral, mixtral, qwen2,
// qwen3, qwen3_moe, gpt2, bert, roberta): read and check the config; when the model it describes
// is small, build it and run one forward pass over its first and last token ids.
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <string>

#include "fuzz_target.h"
#include "peft/error.h"
#include "peft/models/model.h"

namespace peft::fuzz {

void model_config(const uint8_t* data, size_t size) {
  silence_warnings();
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    // Larger models are checked (sizes, before anything is allocated) but not built: building
    // them would measure the allocator, not the reader.
    if (models::config_parameters_lower_bound(text) > 2e5) return;
    const auto model = models::from_config(text);
    const int64_t vocab = model->vocab_size();
    torch::NoGradGuard no_grad;
    const at::Tensor ids = at::tensor({int64_t{0}, vocab - 1}, at::kLong).reshape({1, 2});
    models::ForwardInput input;
    input.input_ids = ids;
    (void)model->forward(input);
  } catch (const peft::Error&) {
  }
}

}  // namespace peft::fuzz
