// config.json (transformers' LlamaConfig for LlamaForCausalLM, every field written out, as
// save_pretrained does) and generation_config.json of the demo base model.
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "make_demo.h"
#include "peft/io/atomic_write.h"

namespace make_demo {
namespace {

void write_text(const std::string& path, const std::string& text) {
  peft::io::write_file_atomically(path, text, "make-demo");
}

}  // namespace

std::string llama_config_json(const ModelShape& shape, int64_t vocab_size, int64_t pad_id,
                              int64_t bos_id, int64_t eos_id) {
  nlohmann::ordered_json c;
  c["architectures"] = {"LlamaForCausalLM"};
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = bos_id;
  c["eos_token_id"] = eos_id;
  c["head_dim"] = shape.hidden_size / shape.num_attention_heads;
  c["hidden_act"] = "silu";
  c["hidden_size"] = shape.hidden_size;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = shape.intermediate_size;
  c["max_position_embeddings"] = shape.max_position_embeddings;
  c["mlp_bias"] = false;
  c["model_type"] = "llama";
  c["num_attention_heads"] = shape.num_attention_heads;
  c["num_hidden_layers"] = shape.num_hidden_layers;
  c["num_key_value_heads"] = shape.num_key_value_heads;
  c["pad_token_id"] = pad_id;
  c["pretraining_tp"] = 1;
  c["rms_norm_eps"] = 1e-6;
  c["rope_scaling"] = nullptr;
  c["rope_theta"] = 10000.0;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = "float32";
  c["use_cache"] = true;
  c["vocab_size"] = vocab_size;
  return c.dump(2) + "\n";
}

void write_model_configs(const std::string& model_dir, const std::string& config_json,
                         int64_t pad_id, int64_t bos_id, int64_t eos_id) {
  write_text(model_dir + "/config.json", config_json);
  nlohmann::ordered_json g;
  g["bos_token_id"] = bos_id;
  g["do_sample"] = false;
  g["eos_token_id"] = eos_id;
  g["max_new_tokens"] = 32;
  g["pad_token_id"] = pad_id;
  write_text(model_dir + "/generation_config.json", g.dump(2) + "\n");
}

}  // namespace make_demo
