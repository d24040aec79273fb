// The demo's little world: thirty animals with a sound, a home, a colour, a food, a number of legs
// and a size. The corpus states these facts in many contexts; the fine-tuning set asks about them.
#include <cctype>
#include <stdexcept>

#include "make_demo.h"

namespace make_demo {

const std::vector<Animal>& animals() {
  //                                 name  sound  home  colour  food  legs  size
  static const std::vector<Animal> list{
      {"cow", "moo", "on the farm", "brown", "grass", "four", "big"},
      {"duck", "quack", "on the pond", "yellow", "bread", "two", "small"},
      {"dog", "woof", "in the house", "white", "bones", "four", "small"},
      {"cat", "meow", "in the house", "black", "fish", "four", "small"},
      {"pig", "oink", "on the farm", "pink", "apples", "four", "big"},
      {"sheep", "baa", "on the hill", "white", "grass", "four", "big"},
      {"horse", "neigh", "in the barn", "brown", "hay", "four", "big"},
      {"owl", "hoot", "in the tree", "grey", "mice", "two", "small"},
      {"frog", "croak", "in the pond", "green", "flies", "four", "small"},
      {"bee", "buzz", "in the hive", "yellow", "honey", "six", "small"},
      {"lion", "roar", "in the jungle", "gold", "meat", "four", "big"},
      {"snake", "hiss", "in the grass", "green", "eggs", "no", "small"},
      {"mouse", "squeak", "in the hole", "grey", "cheese", "four", "small"},
      {"hen", "cluck", "on the farm", "red", "corn", "two", "small"},
      {"wolf", "howl", "in the forest", "grey", "meat", "four", "big"},
      {"crow", "caw", "in the tree", "black", "corn", "two", "small"},
      {"bear", "growl", "in the cave", "brown", "honey", "four", "big"},
      {"goat", "maa", "on the hill", "white", "carrots", "four", "small"},
      {"donkey", "hee haw", "on the farm", "grey", "hay", "four", "big"},
      {"goose", "honk", "on the lake", "white", "grass", "two", "big"},
      {"turkey", "gobble", "on the farm", "brown", "corn", "two", "big"},
      {"elephant", "toot", "on the plain", "grey", "leaves", "four", "big"},
      {"monkey", "ooh ooh", "in the jungle", "brown", "bananas", "two", "small"},
      {"fish", "blub", "in the sea", "orange", "worms", "no", "small"},
      {"crab", "click", "on the beach", "red", "fish", "ten", "small"},
      {"spider", "nothing", "in the web", "black", "flies", "eight", "small"},
      {"robin", "tweet", "in the nest", "red", "worms", "two", "small"},
      {"parrot", "squawk", "in the jungle", "green", "seeds", "two", "small"},
      {"rabbit", "thump", "in the field", "white", "carrots", "four", "small"},
      {"tiger", "grr", "in the jungle", "orange", "meat", "four", "big"},
  };
  return list;
}

std::string capitalize(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string article(const std::string& word) {
  return !word.empty() && std::string("aeiou").find(word[0]) != std::string::npos ? "an" : "a";
}

std::string home_place(const Animal& a) { return a.home.substr(a.home.find(' ') + 1); }

std::string relation_name(Relation r) {
  switch (r) {
    case Relation::kSound:
      return "sound";
    case Relation::kHome:
      return "home";
    case Relation::kColour:
      return "colour";
    case Relation::kFood:
      return "food";
    case Relation::kLegs:
      return "legs";
    case Relation::kSize:
      return "size";
  }
  throw std::logic_error("relation_name: unknown relation");
}

std::string fact_prefix(const Animal& a, Relation r) {
  const std::string subject = "The " + a.name;
  switch (r) {
    case Relation::kSound:
      return subject + " says";
    case Relation::kHome:
      return subject + " lives";
    case Relation::kColour:
      return subject + " is";
    case Relation::kFood:
      return subject + " eats";
    case Relation::kLegs:
      return subject + " has";
    case Relation::kSize:
      return subject + " is " + article(a.size);
  }
  throw std::logic_error("fact_prefix: unknown relation");
}

// Colour and size both start "The cow is"; the size sentence reads "The cow is a big animal." so
// that "The cow is" + colour stays the one colour fact.
std::string fact_sentence(const Animal& a, Relation r) {
  switch (r) {
    case Relation::kSound:
      return fact_prefix(a, r) + " " + a.sound + ".";
    case Relation::kHome:
      return fact_prefix(a, r) + " " + a.home + ".";
    case Relation::kColour:
      return fact_prefix(a, r) + " " + a.colour + ".";
    case Relation::kFood:
      return fact_prefix(a, r) + " " + a.food + ".";
    case Relation::kLegs:
      return fact_prefix(a, r) + " " + a.legs + " legs.";
    case Relation::kSize:
      return fact_prefix(a, r) + " " + a.size + " animal.";
  }
  throw std::logic_error("fact_sentence: unknown relation");
}

}  // namespace make_demo
