// Issue 17's training workloads: the models (random weights: a small Llama and a Qwen2-0.5B-shaped
// one, transformers' config.json for Qwen2-0.5B, 494 M parameters), the adapter and one step.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "peft/config.h"
#include "peft/models/model.h"
#include "peft/runtime.h"
#include "peft/train/loss.h"
#include "peft/train/optimizer.h"

namespace peft::bench {

inline constexpr const char* kLlamaConfig = R"({
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1376,
    "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 4096,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false})";
// Qwen2-0.5B's config.json (transformers), weights random.
inline constexpr const char* kQwen05BConfig = R"({
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
    "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 21})";

// LoRA r=16, alpha=32 on q_proj / v_proj, or on every linear layer.
inline LoraConfig workload_lora_config(bool all_linear) {
  LoraConfig c;
  c.r = 16;
  c.lora_alpha = 32;
  if (all_linear) {
    c.target_modules = std::string("all-linear");
  } else {
    c.target_modules = std::vector<std::string>{"q_proj", "v_proj"};
  }
  return c;
}

// One training step on `ids`: forward and causal-LM loss (under bfloat16 autocast with bf16),
// backward, optimizer update.
inline void workload_train_step(models::PretrainedModel& model, train::Optimizer& optimizer,
                                const at::Tensor& ids, bool bf16) {
  models::ForwardInput in;
  in.input_ids = ids;
  at::Tensor loss;
  {
    Bf16Autocast autocast(bf16);
    loss = train::causal_lm_loss(model.forward(in), ids);
  }
  loss.backward();
  optimizer.step();
  optimizer.zero_grad();
}

}  // namespace peft::bench
