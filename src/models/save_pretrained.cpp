// Writing a model as a Hugging Face checkpoint folder (transformers' save_pretrained): config.json
// and model.safetensors, tied tensors once.
#include <filesystem>

#include "peft/io/atomic_write.h"
#include "peft/io/hf_checkpoint.h"
#include "peft/models/model.h"

namespace peft::models {

void save_pretrained(const PretrainedModel& model, const std::string& dir) {
  std::vector<std::string> skip;
  const auto params = model.named_parameters();
  for (const auto& [key, source] : model.tied_weights()) {
    const at::Tensor* t = params.find(key);
    const at::Tensor* s = params.find(source);
    if (t && s && t->is_same(*s)) skip.push_back(key);
  }
  std::filesystem::create_directories(dir);
  io::save_checkpoint_tensors(model, dir, skip);
  if (!model.config_json().empty()) {
    io::write_file_atomically((std::filesystem::path(dir) / "config.json").string(),
                              model.config_json(), "save_pretrained");
  }
}

}  // namespace peft::models
