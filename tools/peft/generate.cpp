// peft generate --model DIR [--adapter [NAME=]DIR]... (--prompt TEXT | --prompts FILE) [sampling
// flags]:
// --prompt streams the continuation. An aLoRA adapter (alora_invocation_tokens in its
// adapter_config.json) acts from the last occurrence of its invocation sequence in the prompt on,
// as in PEFT, where users append the invocation string to the prompt; a prompt without it is
// refused with the string to append.
// --prompts runs every line of FILE as one batch and prints one JSON line per prompt; a line is
// either plain text or {"prompt": TEXT, "adapter": NAME}: with adapters named per line, each prompt
// runs with its own adapter (a mixed batch; lines without one get the base model, "__base__").
#include "peft/generate.h"

#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "common.h"
#include "peft/error.h"
#include "peft/io/json.h"
#include "peft/io/read_file.h"
#include "peft/lora/forward_context.h"
#include "peft/lora/mixed_batch.h"
#include "peft/tokenizer.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

struct GenerateOptions {
  ModelOptions model;
  std::vector<std::string> adapters;
  std::string prompt;
  std::string prompts_file;
  GenerationConfig gen;
  std::vector<int64_t> stop_tokens;
  bool no_special_tokens = false;
};

// eos_token_id from generation_config.json, else config.json (an int or a list).
std::vector<int64_t> eos_ids(const std::string& dir) {
  for (const char* file : {"generation_config.json", "config.json"}) {
    const fs::path p = fs::path(dir) / file;
    if (!fs::exists(p)) continue;
    const std::string text = io::read_file(p, "generate");
    io::check_json_depth(text, "generate", p.string());
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("eos_token_id")) continue;
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) return {e.get<int64_t>()};
    if (e.is_array()) return e.get<std::vector<int64_t>>();
  }
  return {};
}

// Every active aLoRA adapter's invocation sequence must occur in the prompt (generate() would
// refuse it too; here the message also shows the text to append).
void check_alora_invocation(const PeftModel* pm, const Tokenizer& tok,
                            const std::vector<int64_t>& prompt) {
  if (pm == nullptr) return;
  const at::Tensor ids =
      torch::tensor(prompt, torch::kLong).view({1, static_cast<int64_t>(prompt.size())});
  for (const auto& name : pm->active_adapters()) {
    const auto& tokens = pm->peft_config(name).alora_invocation_tokens;
    if (!tokens || nn::calculate_alora_offsets(ids, *tokens).front()) continue;
    std::ostringstream list;
    for (size_t i = 0; i < tokens->size(); ++i) list << (i ? ", " : "") << (*tokens)[i];
    const std::string text = tok.decode(*tokens, /*skip_special_tokens=*/false);
    throw ConfigError("generate",
                      "the prompt lacks the invocation sequence [" + list.str() + "] (\"" + text +
                          "\") of aLoRA adapter \"" + name +
                          "\"; expected it in the prompt, the adapter acts from its last "
                          "occurrence on (hint: append \"" +
                          text + "\" to --prompt)");
  }
}

struct PromptLine {
  std::string prompt;
  std::optional<std::string> adapter;
};

// The lines of a --prompts file: plain text, or a JSON object with "prompt" and an optional
// "adapter".
std::vector<PromptLine> read_prompts(const std::string& path) {
  std::istringstream f(io::read_file(path, "generate"));
  std::vector<PromptLine> out;
  std::string line;
  for (int number = 1; std::getline(f, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line.front() != '{') {
      out.push_back({line, std::nullopt});
      continue;
    }
    io::check_json_depth(line, "generate", path + " line " + std::to_string(number));
    auto j = nlohmann::json::parse(line, nullptr, false);
    PEFT_CHECK(!j.is_discarded() && j.is_object() && j.contains("prompt") &&
                   j["prompt"].is_string() && (!j.contains("adapter") || j["adapter"].is_string()),
               FormatError, "generate",
               "\"" << path << "\" line " << number
                    << " is not {\"prompt\": TEXT, \"adapter\": NAME} (hint: write plain text "
                       "lines, or JSON "
                       "objects with a string \"prompt\" and an optional string \"adapter\")");
    PromptLine p{j["prompt"].get<std::string>(), std::nullopt};
    if (j.contains("adapter")) p.adapter = j["adapter"].get<std::string>();
    out.push_back(std::move(p));
  }
  PEFT_CHECK(!out.empty(), FormatError, "generate",
             "--prompts file \"" << path << "\" holds no prompt");
  return out;
}

// The stop tokens (--stop-token, else the model's eos ids), written into o.gen with the tokenizer's
// pad token.
std::set<int64_t> configure_stops(GenerateOptions& o, const Tokenizer& tok) {
  std::set<int64_t> stops(o.stop_tokens.begin(), o.stop_tokens.end());
  if (o.stop_tokens.empty()) {
    for (int64_t id : eos_ids(o.model.model_dir)) stops.insert(id);
    if (tok.eos_token_id()) stops.insert(*tok.eos_token_id());
  }
  o.gen.eos_token_ids.assign(stops.begin(), stops.end());
  if (!o.gen.pad_token_id && tok.pad_token_id()) o.gen.pad_token_id = tok.pad_token_id();
  return stops;
}

// --prompts: one batch, one JSON line per prompt ({"adapter", "prompt", "completion"}).
void run_batch(GenerateOptions o) {
  const std::vector<PromptLine> lines = read_prompts(o.prompts_file);
  auto model = load_model(o.model);
  auto pm = load_adapters(model, o.adapters);
  Tokenizer tok = Tokenizer::from_dir(o.model.model_dir);
  std::vector<std::vector<int64_t>> prompts;
  const bool mixed = std::any_of(lines.begin(), lines.end(),
                                 [](const PromptLine& p) { return p.adapter.has_value(); });
  for (size_t i = 0; i < lines.size(); ++i) {
    prompts.push_back(tok.encode(lines[i].prompt, !o.no_special_tokens));
    PEFT_CHECK(!prompts.back().empty(), ConfigError, "generate",
               "prompt " << i + 1 << " encodes to no tokens");
    if (mixed) o.gen.adapter_names.push_back(lines[i].adapter.value_or(nn::kBaseAdapterName));
  }
  PEFT_CHECK(!mixed || pm, ConfigError, "generate",
             "the --prompts file names adapters but no --adapter NAME=DIR was given");
  if (!mixed) {
    for (const auto& p : prompts) check_alora_invocation(pm.get(), tok, p);
  }
  const std::set<int64_t> stops = configure_stops(o, tok);
  torch::NoGradGuard no_grad;
  const auto out = generate(*model, prompts, o.gen);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::vector<int64_t> tokens;
    for (int64_t t : out[i]) {
      if (!stops.count(t)) tokens.push_back(t);
    }
    nlohmann::json j = {{"prompt", lines[i].prompt},
                        {"completion", tok.decode(tokens, /*skip_special_tokens=*/true)}};
    if (mixed) j["adapter"] = o.gen.adapter_names[i];
    std::cout << j.dump() << "\n";
  }
}

void run(GenerateOptions o) {
  PEFT_CHECK(o.prompt.empty() != o.prompts_file.empty(), ConfigError, "generate",
             "give either --prompt TEXT or --prompts FILE (exactly one)");
  if (!o.prompts_file.empty()) return run_batch(std::move(o));
  auto model = load_model(o.model);
  auto pm = load_adapters(model, o.adapters);
  Tokenizer tok = Tokenizer::from_dir(o.model.model_dir);
  std::vector<int64_t> prompt = tok.encode(o.prompt, !o.no_special_tokens);
  PEFT_CHECK(!prompt.empty(), ConfigError, "generate", "the prompt encodes to no tokens");
  check_alora_invocation(pm.get(), tok, prompt);
  const std::set<int64_t> stops = configure_stops(o, tok);
  std::vector<int64_t> generated;
  std::string printed;
  bool started = false;  // the prompt is echoed once generation is under way (errors come first)
  torch::NoGradGuard no_grad;
  generate(*model, {prompt}, o.gen, [&](size_t, int64_t token) {
    if (!started) {
      std::cout << o.prompt << std::flush;
      started = true;
    }
    if (stops.count(token)) return;
    generated.push_back(token);
    // Decode everything so far and print the new suffix: a token may complete a multi-byte
    // character.
    std::string text = tok.decode(generated, /*skip_special_tokens=*/true);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << std::flush;
      printed = text;
    }
  });
  if (!started) std::cout << o.prompt;
  std::cout << "\n";
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  auto* verb =
      app.add_subcommand("generate",
                         "generate text from a prompt, streaming tokens as they come (an aLoRA "
                         "adapter needs its invocation string in the prompt)");
  add_model_options(verb, o->model);
  add_quantize_options(verb, o->model);
  verb->add_option("--adapter", o->adapters,
                   "[NAME=]DIR: a PEFT adapter folder (repeatable: all active, unless --prompts "
                   "names one adapter "
                   "per line; aLoRA adapters need their invocation string in the prompt)");
  verb->add_option("--prompt", o->prompt, "prompt text (streamed)");
  verb->add_option("--prompts", o->prompts_file,
                   "file of prompts run as one batch, one per line: plain text or {\"prompt\": "
                   "TEXT, \"adapter\": "
                   "NAME}; prints one JSON line per prompt");
  verb->add_option("--max-new-tokens", o->gen.max_new_tokens, "tokens to generate at most")
      ->capture_default_str();
  verb->add_flag("--do-sample", o->gen.do_sample, "sample instead of greedy decoding");
  verb->add_option("--temperature", o->gen.temperature, "sampling temperature")
      ->capture_default_str();
  verb->add_option("--top-k", o->gen.top_k, "keep the k most likely tokens (0: off)")
      ->capture_default_str();
  verb->add_option("--top-p", o->gen.top_p, "nucleus sampling mass (1: off)")
      ->capture_default_str();
  verb->add_option("--repetition-penalty", o->gen.repetition_penalty,
                   "transformers' repetition penalty")
      ->capture_default_str();
  verb->add_option("--seed", o->gen.seed, "sampling seed")->capture_default_str();
  verb->add_option("--stop-token", o->stop_tokens,
                   "stop token id (repeatable; default: the model's eos ids)");
  verb->add_flag("--no-special-tokens", o->no_special_tokens,
                 "do not add BOS / template tokens to the prompt");
  verb->callback([o] { run(*o); });
}

}  // namespace peft::cli
