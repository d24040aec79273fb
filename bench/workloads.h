// The models of issue 17's training workloads, random weights: a small Llama and a
// Qwen2-0.5B-shaped one (transformers' config.json for Qwen2-0.5B, 494 M parameters).
#pragma once

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

}  // namespace peft::bench
