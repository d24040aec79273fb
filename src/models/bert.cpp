// BertForSequenceClassification and RobertaForSequenceClassification on the shared encoder
// (bert_encoder.h). Counterparts: transformers' modeling_bert.py / modeling_roberta.py
// sequence-classification heads.
#include <ATen/ATen.h>
#include <torch/types.h>

#include "bert_encoder.h"
#include "config_reader.h"
#include "families.h"
#include "peft/error.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/linear.h"
#include "replicate.h"

namespace peft::models::detail {
namespace {

at::Tensor maybe_dropout(const at::Tensor& x, double p, bool training) {
  return p > 0.0 && training ? at::dropout(x, p, true) : x;
}

// RobertaClassificationHead: out_proj(dropout(tanh(dense(dropout(hidden[:, 0]))))). PEFT's
// modules_to_save=["classifier"] copies both Linears.
class RobertaClassificationHeadImpl : public torch::nn::Module {
 public:
  RobertaClassificationHeadImpl(int64_t hidden, int64_t num_labels, double dropout)
      : dropout_(dropout) {
    dense = register_module("dense", nn::Linear(hidden, hidden));
    out_proj = register_module("out_proj", nn::Linear(hidden, num_labels));
  }
  at::Tensor forward(const at::Tensor& sequence_output) {
    at::Tensor x = maybe_dropout(sequence_output.select(1, 0), dropout_, is_training());
    x = maybe_dropout(at::tanh(dense->forward(x)), dropout_, is_training());
    return out_proj->forward(x);
  }
  nn::Linear dense{nullptr};
  nn::Linear out_proj{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(RobertaClassificationHead);

class SequenceClassifier : public PretrainedModel {
 public:
  SequenceClassifier(const BertConfig& c, int64_t num_labels, double classifier_dropout)
      : c_(c), num_labels_(num_labels), classifier_dropout_(classifier_dropout) {
    // RobertaForSequenceClassification builds RobertaModel(add_pooling_layer=False).
    encoder_ = register_module(
        prefix(), std::make_shared<BertModelImpl>(c, /*add_pooling_layer=*/!c.roberta));
    if (c.roberta) {
      roberta_head_ = register_module(
          "classifier", RobertaClassificationHead(c.hidden_size, num_labels, classifier_dropout));
    } else {
      bert_head_ = register_module("classifier", nn::Linear(c.hidden_size, num_labels));
    }
  }

  // Logits (batch, num_labels).
  at::Tensor forward(const ForwardInput& in) override {
    nn::ForwardInputIdsGuard ids_guard(
        in.input_ids);  // aLoRA layers find their invocation sequence in it
    PEFT_CHECK(in.cache == nullptr, UnsupportedError, prefix(),
               "a KV cache is for causal LMs; this is an encoder");
    at::Tensor h = encoder_->forward(in.input_ids, in.attention_mask, in.token_type_ids);
    if (c_.roberta) return roberta_head_->forward(h);
    return bert_head_->forward(
        maybe_dropout(encoder_->pool(h), classifier_dropout_, is_training()));
  }

  ModelTask task() const override { return ModelTask::kSequenceClassification; }
  int64_t num_hidden_layers() const override { return c_.num_hidden_layers; }
  int64_t vocab_size() const override { return c_.vocab_size; }
  int64_t num_labels() const { return num_labels_; }
  std::string input_embedding_name() const override {
    return prefix() + ".embeddings.word_embeddings";
  }

  std::string model_type() const override { return c_.roberta ? "roberta" : "bert"; }
  std::string class_name() const override {
    return c_.roberta ? "RobertaForSequenceClassification" : "BertForSequenceClassification";
  }
  std::string parent_library() const override {
    return c_.roberta ? "transformers.models.roberta.modeling_roberta"
                      : "transformers.models.bert.modeling_bert";
  }
  std::vector<std::string> default_target_modules() const override { return {"query", "value"}; }
  std::string output_embedding_name() const override { return ""; }

  // PEFT replicate_layers on <bert|roberta>.encoder.layer.
  // Divergence from PEFT: PEFT finds .bert.encoder.layer but not RobertaForSequenceClassification's
  // .roberta.encoder.layer (it raises ValueError there); here RoBERTa is supported too.
  void replicate_layers(const LayerRanges& ranges) override {
    if (ranges.empty()) return;  // PEFT: an empty layer_replication is falsy, nothing happens
    const auto sources =
        replication_sources(ranges, c_.num_hidden_layers, prefix() + ".encoder.layer");
    encoder_->replicate_layers(sources, prefix());
    c_.num_hidden_layers = static_cast<int64_t>(sources.size());
    // PEFT sets config.num_hidden_layers.
    set_config_json(
        patched_config_json(config_json(), {{"num_hidden_layers", c_.num_hidden_layers}}));
  }

 private:
  std::string prefix() const { return c_.roberta ? "roberta" : "bert"; }

  BertConfig c_;
  int64_t num_labels_;
  double classifier_dropout_;
  std::shared_ptr<BertModelImpl> encoder_;
  nn::Linear bert_head_{nullptr};
  RobertaClassificationHead roberta_head_{nullptr};
};

}  // namespace

std::shared_ptr<PretrainedModel> make_bert(const nlohmann::json& config) {
  const std::string model_type = config.value("model_type", std::string("bert"));
  ConfigReader r(config, model_type);
  // Only the sequence classifier is built; a checkpoint of another head (BertForMaskedLM,
  // BertModel, ...) would load with missing weights, so it is refused up front.
  if (r.has("architectures")) {
    const auto archs = r.get<std::vector<std::string>>("architectures");
    bool classifier = false;
    for (const auto& a : archs) {
      const std::string suffix = "ForSequenceClassification";
      classifier = classifier || (a.size() >= suffix.size() &&
                                  a.compare(a.size() - suffix.size(), suffix.size(), suffix) == 0);
    }
    std::string listed;
    for (const auto& a : archs) listed += (listed.empty() ? "" : ", ") + a;
    PEFT_CHECK(
        classifier, UnsupportedError, "load_pretrained",
        model_type
            << " config field \"architectures\" is [" << listed
            << "]; only *ForSequenceClassification "
            << "checkpoints are supported for " << model_type
            << " (hint: fine-tune a classifier in transformers first, or save it with its head)");
  }
  const BertConfig c = read_bert_config(config, model_type);
  int64_t num_labels = r.get<int64_t>("num_labels", 2);
  if (r.has("id2label")) {
    PEFT_CHECK(
        config["id2label"].is_object(), ConfigError, "config.json",
        model_type << " config field \"id2label\" is not an object: " << config["id2label"].dump());
    num_labels = static_cast<int64_t>(config["id2label"].size());
  }
  PEFT_CHECK(num_labels > 0, ConfigError, "config.json",
             model_type << " config field \"id2label\" / \"num_labels\" gives " << num_labels
                        << " labels");
  const double dropout = r.probability("classifier_dropout", c.hidden_dropout_prob);
  return std::make_shared<SequenceClassifier>(c, num_labels, dropout);
}

}  // namespace peft::models::detail
