// The BERT / RoBERTa encoder (embeddings, transformer layers, optional pooler) built from peft::nn
// layers under transformers' module names (private to the model zoo). Counterparts: BertModel
// (models/bert/modeling_bert.py) and RobertaModel (models/roberta/modeling_roberta.py), eager
// attention.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "activations.h"

namespace peft::models::detail {

// transformers' ACT2FN entries BERT-style configs use for hidden_act.

struct BertConfig {
  bool roberta = false;              // model_type "roberta": RoBERTa position ids from pad_token_id
  int64_t vocab_size = 0;            // word embedding rows
  int64_t hidden_size = 768;         // model width
  int64_t num_hidden_layers = 12;    // encoder layers
  int64_t num_attention_heads = 12;  // heads per layer (hidden_size divisible by it)
  int64_t intermediate_size = 3072;  // feed-forward width
  int64_t max_position_embeddings = 512;  // position embedding rows
  int64_t type_vocab_size = 2;            // token type embedding rows
  int64_t pad_token_id = 0;  // padding_idx of the word (and RoBERTa position) embeddings
  Activation hidden_act = Activation::kGelu;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
};

// Reads and validates the encoder fields of config.json (ConfigError naming the field).
BertConfig read_bert_config(const nlohmann::json& config, const std::string& model_type);

class BertEmbeddingsImpl;
class BertEncoderImpl;
class BertPoolerImpl;

// BertModel / RobertaModel: registers "embeddings", "encoder" and, with add_pooling_layer,
// "pooler".
class BertModelImpl : public torch::nn::Module {
 public:
  BertModelImpl(const BertConfig& config, bool add_pooling_layer);
  // input_ids: (batch, seq) int64; attention_mask: (batch, seq) of 1/0 or undefined (all attended);
  // token_type_ids: (batch, seq) or undefined (zeros). Returns the last hidden states (batch, seq,
  // hidden).
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                     const at::Tensor& token_type_ids);
  // BertPooler: tanh(dense(hidden[:, 0])) -> (batch, hidden). Requires add_pooling_layer.
  at::Tensor pool(const at::Tensor& sequence_output);
  const BertConfig& config() const { return config_; }
  // Layer replication: encoder.layer becomes layers[sources[0]], layers[sources[1]], ...; copies
  // share their source's parameters (see replicate.h). `prefix` ("bert") names the model in errors.
  void replicate_layers(const std::vector<size_t>& sources, const std::string& prefix);

 private:
  BertConfig config_;
  std::shared_ptr<BertEmbeddingsImpl> embeddings_;
  std::shared_ptr<BertEncoderImpl> encoder_;
  std::shared_ptr<BertPoolerImpl> pooler_;
};

}  // namespace peft::models::detail
