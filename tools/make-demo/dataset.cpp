// The fine-tuning task: answer a question about an animal with the fact's sentence, e.g.
//   prompt "Question: What does the cow say?\nAnswer:"  completion " The cow says moo."
// The base model knows the facts (pretraining) but has never seen a question. Eval asks about
// (animal, relation) pairs that no training line mentions, so a low eval loss means the adapter
// learned the format and reuses the base model's knowledge rather than memorising answers.
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>

#include "make_demo.h"
#include "peft/io/atomic_write.h"

namespace make_demo {
namespace {

// Question phrasings per relation; "X" is replaced by the animal's name.
const std::vector<std::string>& questions(Relation r) {
  static const std::vector<std::string> sound{"What does the X say?", "What sound does the X make?",
                                              "What noise does the X make?"};
  static const std::vector<std::string> home{
      "Where does the X live?", "Where is the home of the X?", "Where can you find the X?"};
  static const std::vector<std::string> colour{
      "What colour is the X?", "What is the colour of the X?", "Which colour is the X?"};
  static const std::vector<std::string> food{"What does the X eat?", "What food does the X like?",
                                             "What is the food of the X?"};
  static const std::vector<std::string> legs{"How many legs does the X have?",
                                             "How many legs has the X got?",
                                             "What number of legs does the X have?"};
  static const std::vector<std::string> size{"Is the X big or small?", "Is the X small or big?",
                                             "How big is the X?"};
  switch (r) {
    case Relation::kSound:
      return sound;
    case Relation::kHome:
      return home;
    case Relation::kColour:
      return colour;
    case Relation::kFood:
      return food;
    case Relation::kLegs:
      return legs;
    case Relation::kSize:
      return size;
  }
  throw std::logic_error("questions: unknown relation");
}

QaExample example(const Animal& a, Relation r, const std::string& question) {
  std::string q = question;
  q.replace(q.find('X'), 1, a.name);
  return {"Question: " + q + "\nAnswer:", " " + fact_sentence(a, r)};
}

void write_jsonl(const std::string& path, const std::vector<QaExample>& lines) {
  std::string text;
  for (const auto& e : lines) {
    nlohmann::ordered_json j;
    j["prompt"] = e.prompt;
    j["completion"] = e.completion;
    text += j.dump() + "\n";
  }
  peft::io::write_file_atomically(path, text, "make-demo");
}

}  // namespace

QaDataset make_qa_dataset(Rng& rng) {
  QaDataset out;
  const auto& all = animals();
  // One relation in five of every animal is held out for eval (a different one per animal, so
  // every relation and every animal appears in both splits).
  std::vector<size_t> offset(all.size());
  for (size_t i = 0; i < all.size(); ++i) offset[i] = rng.below(std::size(kRelations));
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t k = 0; k < std::size(kRelations); ++k) {
      const Relation r = kRelations[k];
      const auto& qs = questions(r);
      const bool held_out = k == offset[i];
      if (held_out) {
        ++out.eval_facts;
        // Two of the phrasings, chosen at random.
        const size_t skip = rng.below(qs.size());
        for (size_t q = 0; q < qs.size(); ++q) {
          if (q != skip) out.eval.push_back(example(all[i], r, qs[q]));
        }
      } else {
        ++out.train_facts;
        for (const auto& q : qs) out.train.push_back(example(all[i], r, q));
      }
    }
  }
  rng.shuffle(out.train);
  rng.shuffle(out.eval);
  std::set<std::string> train_prompts;
  for (const auto& e : out.train) train_prompts.insert(e.prompt);
  for (const auto& e : out.eval) {
    if (train_prompts.count(e.prompt)) throw std::logic_error("eval prompt in train: " + e.prompt);
  }
  return out;
}

void write_dataset(const std::string& data_dir, const QaDataset& data) {
  write_jsonl(data_dir + "/train.jsonl", data.train);
  write_jsonl(data_dir + "/eval.jsonl", data.eval);
  std::ostringstream f;
  f << "# Demo fine-tuning data\n\n"
       "Question answering about the animals of the demo base model's world, one JSON object per "
       "line:\n\n"
       "```json\n"
       "{\"prompt\": \"Question: What does the cow say?\\nAnswer:\", \"completion\": \" The cow "
       "says moo.\"}\n"
       "```\n\n"
       "- `train.jsonl`: "
    << data.train.size() << " lines about " << data.train_facts
    << " (animal, relation) facts, three phrasings of the question each.\n"
       "- `eval.jsonl`: "
    << data.eval.size() << " lines about " << data.eval_facts
    << " other facts (one relation per animal, two phrasings each). No eval fact appears in "
       "train, so the eval loss measures whether the adapter learned the question/answer format "
       "and reuses what the base model learned in pretraining, not memorised answers.\n\n"
       "Relations: sound (\"says\"), home (\"lives\"), colour, food (\"eats\"), legs, size. "
       "Every answer is the sentence the pretraining corpus states the fact with, so a correct "
       "answer is easy to check by eye against the table in `tools/make-demo/world.cpp`.\n\n"
       "Train on the completion only (labels -100 on the prompt), with the tokenizer's BOS "
       "before the prompt and its EOS (`</s>`) after the completion, as TRL's SFTTrainer does "
       "for prompt/completion data; generation then stops at EOS.\n\n"
       "The base model never saw a question, the words \"Question\" / \"Answer\" or a \"?\" in "
       "pretraining. All text is generated by `make-demo` (public domain).\n";
  peft::io::write_file_atomically(data_dir + "/README.md", f.str(), "make-demo");
}

}  // namespace make_demo
