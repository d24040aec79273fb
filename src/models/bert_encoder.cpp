// BERT / RoBERTa encoder computing what transformers' eager BertModel / RobertaModel compute.
#include "bert_encoder.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>
#include <torch/types.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "activations.h"
#include "checkpoint.h"
#include "config_reader.h"
#include "peft/error.h"
#include "peft/lora/embedding.h"
#include "peft/lora/linear.h"
#include "replicate.h"

namespace peft::models::detail {
namespace {

at::Tensor maybe_dropout(const at::Tensor& x, double p, bool training) {
  return p > 0.0 && training ? at::dropout(x, p, true) : x;
}

torch::nn::LayerNorm layer_norm(const BertConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
}

// BertSelfAttention (eager): softmax(q k^T / sqrt(d) + mask) v.
class BertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit BertSelfAttentionImpl(const BertConfig& c)
      : c_(c), head_dim_(c.hidden_size / c.num_attention_heads) {
    query = register_module("query", nn::Linear(c.hidden_size, c.hidden_size));
    key = register_module("key", nn::Linear(c.hidden_size, c.hidden_size));
    value = register_module("value", nn::Linear(c.hidden_size, c.hidden_size));
  }
  // x: (batch, seq, hidden); mask: (batch, 1, 1, seq) additive or undefined.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) {
    const int64_t B = x.size(0), T = x.size(1);
    auto heads = [&](const at::Tensor& t) {
      return t.view({B, T, c_.num_attention_heads, head_dim_}).transpose(1, 2);
    };
    at::Tensor q = heads(query->forward(x)), k = heads(key->forward(x)),
               v = heads(value->forward(x));
    at::Tensor scores =
        at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim_));
    if (mask.defined()) scores = scores + mask;
    at::Tensor probs =
        maybe_dropout(at::softmax(scores, -1), c_.attention_probs_dropout_prob, is_training());
    return at::matmul(probs, v).transpose(1, 2).reshape({B, T, c_.hidden_size});
  }
  nn::Linear query{nullptr};
  nn::Linear key{nullptr};
  nn::Linear value{nullptr};

 private:
  BertConfig c_;
  int64_t head_dim_;
};
TORCH_MODULE(BertSelfAttention);

// BertSelfOutput / BertOutput: LayerNorm(dropout(dense(h)) + residual).
class DenseNormImpl : public torch::nn::Module {
 public:
  DenseNormImpl(const BertConfig& c, int64_t in_features) : c_(c) {
    dense = register_module("dense", nn::Linear(in_features, c.hidden_size));
    norm = register_module("LayerNorm", layer_norm(c));
  }
  at::Tensor forward(const at::Tensor& h, const at::Tensor& residual) {
    return norm->forward(maybe_dropout(dense->forward(h), c_.hidden_dropout_prob, is_training()) +
                         residual);
  }
  nn::Linear dense{nullptr};
  torch::nn::LayerNorm norm{nullptr};  // "LayerNorm"

 private:
  BertConfig c_;
};
TORCH_MODULE(DenseNorm);

// BertAttention: "self" + "output".
class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(const BertConfig& c) {
    self = register_module("self", BertSelfAttention(c));
    output = register_module("output", DenseNorm(c, c.hidden_size));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) {
    return output->forward(self->forward(x, mask), x);
  }
  BertSelfAttention self{nullptr};
  DenseNorm output{nullptr};
};
TORCH_MODULE(BertAttention);

// BertIntermediate (act(dense(x))) and BertPooler (tanh(dense(x[:, 0]))) hold one "dense".
class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in_features, int64_t out_features) {
    dense = register_module("dense", nn::Linear(in_features, out_features));
  }
  nn::Linear dense{nullptr};
};
TORCH_MODULE(Dense);

class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertConfig& c) : act_(c.hidden_act) {
    attention = register_module("attention", BertAttention(c));
    intermediate = register_module("intermediate", Dense(c.hidden_size, c.intermediate_size));
    output = register_module("output", DenseNorm(c, c.intermediate_size));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) {
    at::Tensor a = attention->forward(x, mask);
    return output->forward(activate(intermediate->dense->forward(a), act_), a);
  }
  BertAttention attention{nullptr};
  Dense intermediate{nullptr};
  DenseNorm output{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(BertLayer);

}  // namespace

class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertConfig& c) : c_(c) {
    word_embeddings = register_module("word_embeddings",
                                      nn::Embedding(c.vocab_size, c.hidden_size, c.pad_token_id));
    // RobertaEmbeddings gives its position embedding padding_idx = pad_token_id (BertEmbeddings
    // none).
    position_embeddings = register_module(
        "position_embeddings",
        nn::Embedding(c.max_position_embeddings, c.hidden_size,
                      c.roberta ? std::optional<int64_t>(c.pad_token_id) : std::nullopt));
    token_type_embeddings =
        register_module("token_type_embeddings", nn::Embedding(c.type_vocab_size, c.hidden_size));
    norm = register_module("LayerNorm", layer_norm(c));
  }

  at::Tensor forward(const at::Tensor& ids, const at::Tensor& token_type_ids) {
    const int64_t B = ids.size(0), T = ids.size(1);
    at::Tensor positions;
    if (c_.roberta) {
      // create_position_ids_from_input_ids: padding_idx + cumsum of non-pad tokens; pads keep
      // padding_idx.
      at::Tensor m = ids.ne(c_.pad_token_id).to(at::kInt);
      positions = (m.cumsum(1).to(at::kInt) * m).to(at::kLong) + c_.pad_token_id;
    } else {
      positions = at::arange(T, ids.options().dtype(at::kLong)).unsqueeze(0).expand({B, T});
    }
    const int64_t max_pos = T == 0 ? 0 : positions.max().item<int64_t>();
    PEFT_CHECK(max_pos < c_.max_position_embeddings, ShapeMismatchError,
               (c_.roberta ? "roberta" : "bert"),
               "sequence of " << T << " tokens needs position " << max_pos
                              << " but max_position_embeddings is " << c_.max_position_embeddings);
    at::Tensor types = token_type_ids.defined() ? token_type_ids.to(ids.device(), at::kLong)
                                                : at::zeros({B, T}, ids.options().dtype(at::kLong));
    at::Tensor h = word_embeddings->forward(ids) + token_type_embeddings->forward(types);
    h = h + position_embeddings->forward(positions);
    return maybe_dropout(norm->forward(h), c_.hidden_dropout_prob, is_training());
  }

  nn::Embedding word_embeddings{nullptr};
  nn::Embedding position_embeddings{nullptr};
  nn::Embedding token_type_embeddings{nullptr};
  torch::nn::LayerNorm norm{nullptr};  // "LayerNorm"

 private:
  BertConfig c_;
};

// BertEncoder; its gradient_checkpointing flag is set by PretrainedModel::
// gradient_checkpointing_enable (the classifier around BertModel holds the model-level switch).
class BertEncoderImpl : public torch::nn::Module, public LayerCheckpointing {
 public:
  explicit BertEncoderImpl(const BertConfig& c) {
    auto list = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      layers.push_back(BertLayer(c));
      list->push_back(layers.back());
    }
  }
  at::Tensor forward(at::Tensor h, const at::Tensor& mask) {
    const bool recompute = gradient_checkpointing && is_training() && at::GradMode::is_enabled();
    for (auto& layer : layers) {
      if (recompute) {
        h = checkpoint(
            [impl = layer.ptr(), mask](const at::Tensor& x) { return impl->forward(x, mask); }, h,
            trainable_parameters(*layer));
      } else {
        h = layer->forward(h, mask);
      }
    }
    return h;
  }
  std::vector<BertLayer> layers;
};

class BertPoolerImpl : public torch::nn::Module {
 public:
  explicit BertPoolerImpl(const BertConfig& c) {
    dense = register_module("dense", nn::Linear(c.hidden_size, c.hidden_size));
  }
  at::Tensor forward(const at::Tensor& h) { return at::tanh(dense->forward(h.select(1, 0))); }
  nn::Linear dense{nullptr};
};

BertConfig read_bert_config(const nlohmann::json& json, const std::string& model_type) {
  ConfigReader r(json, model_type);
  BertConfig c;
  c.roberta = model_type == "roberta";
  c.vocab_size = r.get<int64_t>("vocab_size");
  c.hidden_size = r.get<int64_t>("hidden_size");
  c.num_hidden_layers = r.get<int64_t>("num_hidden_layers");
  c.num_attention_heads = r.get<int64_t>("num_attention_heads");
  c.intermediate_size = r.get<int64_t>("intermediate_size");
  c.max_position_embeddings = r.get<int64_t>("max_position_embeddings", 512);
  c.type_vocab_size = r.get<int64_t>("type_vocab_size", 2);
  c.pad_token_id = r.get<int64_t>("pad_token_id", c.roberta ? 1 : 0);
  c.hidden_act =
      parse_activation(r.get<std::string>("hidden_act", "gelu"), model_type, "hidden_act");
  c.layer_norm_eps = r.get<double>("layer_norm_eps", 1e-12);
  c.hidden_dropout_prob = r.probability("hidden_dropout_prob", 0.1);
  c.attention_probs_dropout_prob = r.probability("attention_probs_dropout_prob", 0.1);
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                                     {"hidden_size", c.hidden_size},
                                     {"num_hidden_layers", c.num_hidden_layers},
                                     {"num_attention_heads", c.num_attention_heads},
                                     {"intermediate_size", c.intermediate_size},
                                     {"max_position_embeddings", c.max_position_embeddings},
                                     {"type_vocab_size", c.type_vocab_size}}) {
    PEFT_CHECK(value > 0, ConfigError, "config.json",
               model_type << " config field \"" << field << "\" must be positive: " << value);
  }
  PEFT_CHECK(c.hidden_size % c.num_attention_heads == 0, ConfigError, "config.json",
             model_type << " config field \"hidden_size\" (" << c.hidden_size
                        << ") is not divisible by \"num_attention_heads\" ("
                        << c.num_attention_heads << ")");
  PEFT_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, ConfigError, "config.json",
             model_type << " config field \"pad_token_id\" (" << c.pad_token_id
                        << ") is outside the vocabulary of " << c.vocab_size);
  PEFT_CHECK(
      c.layer_norm_eps > 0, ConfigError, "config.json",
      model_type << " config field \"layer_norm_eps\" must be positive: " << c.layer_norm_eps);
  const std::string pos = r.get<std::string>("position_embedding_type", "absolute");
  PEFT_CHECK(
      pos == "absolute", UnsupportedError, "config.json",
      model_type
          << " config field \"position_embedding_type\" is \"" << pos
          << "\"; only \"absolute\" is supported (relative_key attention is not implemented)");
  PEFT_CHECK(
      !r.get<bool>("is_decoder", false), UnsupportedError, "config.json",
      model_type
          << " config field \"is_decoder\" is true; only the bidirectional encoder is supported");
  return c;
}

BertModelImpl::BertModelImpl(const BertConfig& config, bool add_pooling_layer) : config_(config) {
  embeddings_ = register_module("embeddings", std::make_shared<BertEmbeddingsImpl>(config));
  encoder_ = register_module("encoder", std::make_shared<BertEncoderImpl>(config));
  if (add_pooling_layer)
    pooler_ = register_module("pooler", std::make_shared<BertPoolerImpl>(config));
}

at::Tensor BertModelImpl::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  const at::Tensor& token_type_ids) {
  const char* component = config_.roberta ? "roberta" : "bert";
  PEFT_CHECK(
      input_ids.defined() && input_ids.dim() == 2 && !c10::isFloatingType(input_ids.scalar_type()),
      ShapeMismatchError, component, "input_ids must be an integer tensor (batch, seq)");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor*>{"attention_mask", &attention_mask},
        {"token_type_ids", &token_type_ids}}) {
    PEFT_CHECK(!t->defined() || (t->dim() == 2 && t->size(0) == B && t->size(1) == T),
               ShapeMismatchError, component,
               name << " has shape " << t->sizes() << "; expected (" << B << ", " << T
                    << ") like input_ids");
  }
  const at::Tensor ids = input_ids.to(at::kLong);
  at::Tensor h = embeddings_->forward(ids, token_type_ids);
  at::Tensor mask;
  if (attention_mask.defined()) {  // get_extended_attention_mask: (1 - mask) * finfo(dtype).min
    mask = (1.0 - attention_mask.to(h.device(), h.scalar_type()))
               .mul_(dtype_min(h.scalar_type()))
               .view({B, 1, 1, T});
  }
  return encoder_->forward(h, mask);
}

void BertModelImpl::replicate_layers(const std::vector<size_t>& sources,
                                     const std::string& prefix) {
  const auto old = as_modules(encoder_->layers);
  std::vector<BertLayer> copies;
  replicate_layer_list(*encoder_, "layer", prefix + ".encoder.layer", old, sources, [&](size_t) {
    copies.push_back(BertLayer(config_));
    return copies.back().ptr();
  });
  encoder_->layers = std::move(copies);
  config_.num_hidden_layers = static_cast<int64_t>(sources.size());
}

at::Tensor BertModelImpl::pool(const at::Tensor& sequence_output) {
  PEFT_CHECK(pooler_ != nullptr, Error, config_.roberta ? "roberta" : "bert",
             "the model was built without a pooler");
  return pooler_->forward(sequence_output);
}

}  // namespace peft::models::detail
