// make-demo: builds the embedded demo assets (assets/demo/) from nothing: a seeded corpus of simple
// English about a fixed little world of animals, a byte-level BPE tokenizer trained on it, a tiny
// Llama pretrained on it, and a question/answer fine-tuning set the base model has never seen.
// Everything is deterministic for a given seed (and thread count); see assets/demo/README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace peft {
class Tokenizer;
namespace models {
class PretrainedModel;
}
}  // namespace peft

namespace make_demo {

// splitmix64: the same numbers on every platform (std:: distributions are implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n > 0; the modulo bias is irrelevant at these sizes).
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  uint64_t state_;
};

// ---- world.cpp: the facts the base model learns in pretraining ----
struct Animal {
  std::string name;    // "cow"
  std::string sound;   // "moo"
  std::string home;    // "on the farm"
  std::string colour;  // "brown"
  std::string food;    // "grass"
  std::string legs;    // "four" ("no" for none)
  std::string size;    // "big" / "small"
};
enum class Relation { kSound, kHome, kColour, kFood, kLegs, kSize };
inline constexpr Relation kRelations[] = {Relation::kSound, Relation::kColour, Relation::kHome,
                                          Relation::kFood,  Relation::kLegs,   Relation::kSize};

const std::vector<Animal>& animals();
// "The cow says moo." (the canonical sentence, used by the corpus and as every answer).
std::string fact_sentence(const Animal& a, Relation r);
// The part of fact_sentence before the fact's value: "The cow says".
std::string fact_prefix(const Animal& a, Relation r);
// "a" or "an" for `word`.
std::string article(const std::string& word);
// "the farm" from "on the farm".
std::string home_place(const Animal& a);
std::string relation_name(Relation r);
std::string capitalize(std::string s);

// ---- corpus.cpp: pretraining documents (no questions, no "Question:" / "Answer:") ----
std::vector<std::string> make_corpus(size_t documents, Rng& rng);

// ---- dataset.cpp: the fine-tuning task ----
struct QaExample {
  std::string prompt;      // "Question: What does the cow say?\nAnswer:"
  std::string completion;  // " The cow says moo."
};
struct QaDataset {
  std::vector<QaExample> train, eval;
  size_t train_facts = 0, eval_facts = 0;  // distinct (animal, relation) pairs in each split
};
// Held-out (animal, relation) pairs go to eval only, so eval asks about facts the base model
// learned in pretraining but the fine-tuning set never shows in question/answer form.
QaDataset make_qa_dataset(Rng& rng);
void write_dataset(const std::string& data_dir, const QaDataset& data);

// ---- bpe_trainer.cpp: byte-level BPE (GPT-2 pre-tokenization) ----
struct BpeModel {
  std::vector<std::string> specials;  // ids 0..n-1, also in the vocabulary (as HF's trainer does)
  std::vector<std::string> vocab;     // every token by id: specials, 256 byte characters, merges
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
};
// The GPT-2 regex split of ASCII-or-not `text`, each piece mapped to byte-level characters.
std::vector<std::string> byte_level_pieces(const std::string& text);
BpeModel train_bpe(const std::vector<std::string>& texts, size_t vocab_size,
                   std::vector<std::string> specials);

// ---- tokenizer_writer.cpp: tokenizer.json + tokenizer_config.json ----
struct SpecialTokens {
  std::string pad = "<pad>", bos = "<s>", eos = "</s>", im_start = "<|im_start|>",
              im_end = "<|im_end|>";
  std::vector<std::string> all() const { return {pad, bos, eos, im_start, im_end}; }
};
void write_tokenizer(const std::string& model_dir, const BpeModel& bpe, const SpecialTokens& sp);
// Loads model_dir with peft::Tokenizer::from_dir and checks encode -> decode is exact on every
// text and the special tokens; throws std::runtime_error naming the first failure.
void check_tokenizer(const std::string& model_dir, const std::vector<std::string>& texts,
                     const SpecialTokens& sp);

// ---- model_config.cpp: config.json + generation_config.json ----
struct ModelShape {
  int64_t hidden_size = 128;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t intermediate_size = 384;
  int64_t max_position_embeddings = 256;
};
// transformers' LlamaConfig for LlamaForCausalLM, every field spelled out.
std::string llama_config_json(const ModelShape& shape, int64_t vocab_size, int64_t pad_id,
                              int64_t bos_id, int64_t eos_id);
void write_model_configs(const std::string& model_dir, const std::string& config_json,
                         int64_t pad_id, int64_t bos_id, int64_t eos_id);

// ---- pretrain.cpp: full training of the base model ----
struct PretrainOptions {
  int64_t steps = 1500;
  int64_t batch_size = 32;
  int64_t seq_len = 64;
  double lr = 3e-3;
  int64_t warmup = 50;
  uint64_t seed = 0;
};
struct PretrainReport {
  double train_loss = 0;                      // mean over the last 50 steps
  double eval_loss_start = 0, eval_loss = 0;  // held-out documents, before / after
  size_t facts_known = 0, facts_total = 0;    // facts completed exactly (greedy)
  double seconds = 0;
};
// Re-initialises `model` as transformers does (normal(0, 0.02), norms 1), then trains every
// parameter on packed chunks of the documents with AdamW.
PretrainReport pretrain(peft::models::PretrainedModel& model, const peft::Tokenizer& tok,
                        const std::vector<std::string>& train_docs,
                        const std::vector<std::string>& eval_docs, const PretrainOptions& opt);
// How many facts the model completes exactly with greedy decoding from their prefix ("The cow
// says" -> " moo"; the final "." is not checked).
std::pair<size_t, size_t> probe_facts(peft::models::PretrainedModel& model,
                                      const peft::Tokenizer& tok);

}  // namespace make_demo
