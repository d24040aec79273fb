// The pretraining corpus: short documents of simple English from a seeded grammar. Every sentence
// about an animal agrees with world.cpp, so the model can learn the facts; nothing is phrased as a
// question, so the fine-tuning task's "Question: ... Answer: ..." format is new to it.
#include <algorithm>
#include <map>

#include "make_demo.h"

namespace make_demo {
namespace {

const std::vector<std::string> kNumbers{"one", "two",   "three", "four", "five",
                                        "six", "seven", "eight", "nine", "ten"};
const std::vector<std::string> kColours{"red",   "blue", "green", "yellow", "white",
                                        "black", "pink", "brown", "grey",   "orange"};
const std::vector<std::string> kThings{"apples", "balls", "boats", "stars", "hats",
                                       "cups",   "eggs",  "kites", "boxes", "flowers"};
const std::vector<std::string> kTrips{"the river", "the park",  "the shop", "the town",
                                      "the woods", "the beach", "the hill", "the lake"};
const std::vector<std::string> kWeather{
    "The sun was hot.",  "It was a cold day.",  "It was raining.",    "The wind was strong.",
    "The sky was blue.", "It was a sunny day.", "The night was dark."};
const std::vector<std::string> kWorld{
    "The sky is blue.", "The grass is green.", "The sun is yellow.", "Snow is white.",
    "The sea is blue.", "The night is dark.",  "Fire is hot.",       "Ice is cold.",
    "Apples are red.",  "Bananas are yellow."};

std::string join_sentences(const std::vector<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : " ") + x;
  return out;
}

// "the cow, the pig and the hen"
std::string list_of(const std::vector<const Animal*>& group) {
  std::string out;
  for (size_t i = 0; i < group.size(); ++i) {
    if (i > 0) out += i + 1 == group.size() ? " and " : ", ";
    out += "the " + group[i]->name;
  }
  return out;
}

std::string value(const Animal& a, Relation r) {
  switch (r) {
    case Relation::kSound:
      return a.sound;
    case Relation::kHome:
      return a.home;
    case Relation::kColour:
      return a.colour;
    case Relation::kFood:
      return a.food;
    case Relation::kLegs:
      return a.legs;
    case Relation::kSize:
      return a.size;
  }
  return "";
}

std::string past_fact(const Animal& a, Relation r) {
  const std::string s = "The " + a.name;
  switch (r) {
    case Relation::kSound:
      return s + " said " + a.sound + ".";
    case Relation::kHome:
      return s + " went back to " + home_place(a) + ".";
    case Relation::kColour:
      return s + " was " + a.colour + ".";
    case Relation::kFood:
      return s + " ate some " + a.food + ".";
    case Relation::kLegs:
      return s + " had " + a.legs + " legs.";
    case Relation::kSize:
      return s + " was " + a.size + ".";
  }
  return s + ".";
}

// One animal, several of its facts in random order.
std::string fact_sheet(Rng& rng) {
  const Animal& a = rng.pick(animals());
  std::vector<Relation> rel(std::begin(kRelations), std::end(kRelations));
  rng.shuffle(rel);
  std::vector<std::string> s;
  if (rng.chance(50)) s.push_back("This is the " + a.name + ".");
  const size_t n = 3 + rng.below(4);
  for (size_t i = 0; i < n; ++i) s.push_back(fact_sentence(a, rel[i]));
  if (rng.chance(30)) s.push_back("I like the " + a.name + ".");
  return join_sentences(s);
}

// Two animals meet on a trip; what they say, eat and look like agrees with the world.
std::string story(Rng& rng) {
  const auto& all = animals();
  const Animal& a = rng.pick(all);
  const Animal* b = &rng.pick(all);
  while (b == &a) b = &rng.pick(all);
  std::vector<std::string> s;
  const std::string A = "The " + a.name;
  s.push_back("One day the " + a.name + " went to " + rng.pick(kTrips) + ".");
  if (rng.chance(40)) s.push_back(rng.pick(kWeather));
  s.push_back(A + " met " + article(b->name) + " " + b->name + ".");
  std::vector<std::string> middle;
  std::vector<Relation> rel{Relation::kSound, Relation::kColour, Relation::kFood, Relation::kLegs,
                            Relation::kSize};
  rng.shuffle(rel);
  // Past tense ("The duck said quack.") or the canonical present-tense fact.
  auto fact = [&](const Animal& x, Relation r) {
    return rng.chance(50) ? past_fact(x, r) : fact_sentence(x, r);
  };
  const size_t facts = 2 + rng.below(3);
  for (size_t i = 0; i < facts; ++i) {
    middle.push_back(fact(*b, rel[i]));
    if (rng.chance(50)) middle.push_back(fact(a, rel[i]));
  }
  if (rng.chance(40)) {
    middle.push_back(A + " saw " + rng.pick(kNumbers) + " " + rng.pick(kColours) + " " +
                     rng.pick(kThings) + ".");
  }
  for (auto& m : middle) s.push_back(m);
  s.push_back(rng.chance(50) ? "They played all day." : "They were friends.");
  s.push_back(past_fact(a, Relation::kHome));
  if (rng.chance(50)) s.push_back(past_fact(*b, Relation::kHome));
  s.push_back("The end.");
  std::string text = join_sentences(s);
  if (rng.chance(50)) text = "The " + a.name + " and the " + b->name + "\n" + text;
  return text;
}

// Two animals compared on one or two relations.
std::string compare(Rng& rng) {
  const auto& all = animals();
  const Animal& a = rng.pick(all);
  const Animal* b = &rng.pick(all);
  while (b == &a) b = &rng.pick(all);
  std::vector<std::string> s;
  std::vector<Relation> rel(std::begin(kRelations), std::end(kRelations));
  rng.shuffle(rel);
  for (size_t i = 0; i < 2; ++i) {
    std::string x = fact_sentence(a, rel[i]), y = fact_sentence(*b, rel[i]);
    x.pop_back();  // drop "."
    y[0] = 't';    // "the duck ..."
    const bool same = value(a, rel[i]) == value(*b, rel[i]);
    s.push_back(x + (same ? " and " : " but ") + y);
  }
  return join_sentences(s);
}

// Animals that share a home or a colour, and a few facts about the world and numbers.
std::string lists(Rng& rng) {
  std::vector<std::string> s;
  std::map<std::string, std::vector<const Animal*>> by_home, by_colour;
  for (const auto& a : animals()) {
    by_home[a.home].push_back(&a);
    by_colour[a.colour].push_back(&a);
  }
  const size_t kind = rng.below(3);
  if (kind == 0) {
    auto it = by_home.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(rng.below(by_home.size())));
    const auto& [home, group] = *it;
    s.push_back(capitalize(home) + (group.size() == 1 ? " lives " : " live ") + list_of(group) +
                ".");
    for (const Animal* a : group) s.push_back(fact_sentence(*a, Relation::kHome));
  } else if (kind == 1) {
    auto it = by_colour.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(rng.below(by_colour.size())));
    const auto& [colour, group] = *it;
    s.push_back(capitalize(list_of(group)) + (group.size() == 1 ? " is " : " are ") + colour + ".");
    for (const Animal* a : group) s.push_back(fact_sentence(*a, Relation::kColour));
  } else {
    const size_t n = 3 + rng.below(8);
    std::string count;
    for (size_t i = 0; i < n; ++i) count += (i ? ", " : "") + kNumbers[i];
    s.push_back(capitalize(count) + ".");
    const size_t x = 1 + rng.below(5), y = 1 + rng.below(5);
    s.push_back(capitalize(kNumbers[x - 1]) + " and " + kNumbers[y - 1] + " make " +
                kNumbers[x + y - 1] + ".");
    s.push_back(rng.pick(kWorld));
    s.push_back(rng.pick(kWorld));
  }
  return join_sentences(s);
}

}  // namespace

std::vector<std::string> make_corpus(size_t documents, Rng& rng) {
  std::vector<std::string> docs;
  docs.reserve(documents);
  for (size_t i = 0; i < documents; ++i) {
    const size_t kind = rng.below(100);
    if (kind < 45) {
      docs.push_back(fact_sheet(rng));
    } else if (kind < 75) {
      docs.push_back(story(rng));
    } else if (kind < 87) {
      docs.push_back(compare(rng));
    } else {
      docs.push_back(lists(rng));
    }
  }
  return docs;
}

}  // namespace make_demo
