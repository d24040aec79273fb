// Fuzz targets of the text inputs: adapter_config.json, tokenizer.json, tokenizer.model, chat
// templates, training JSONL and the launcher environment.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "fuzz_target.h"
#include "mem_file.h"
#include "peft/chat_template.h"
#include "peft/config.h"
#include "peft/dist/launch_env.h"
#include "peft/error.h"
#include "peft/io/atomic_write.h"
#include "peft/io/json.h"
#include "peft/tokenizer.h"
#include "peft/train/data.h"

namespace fs = std::filesystem;

namespace peft::fuzz {
namespace {

// Encodes `text` and decodes the ids back (with and without special tokens).
void exercise(const Tokenizer& tok, std::string_view text) {
  const auto ids = tok.encode(std::string(text));
  (void)tok.decode(ids);
  (void)tok.decode(ids, /*skip_special_tokens=*/true);
}

// A folder of this process for inputs that must be files of a given name.
const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path d = base / ("peft-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

}  // namespace

void lora_config(const uint8_t* data, size_t size) {
  silence_warnings();
  try {
    const LoraConfig c = lora_config_from_json_text(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz/adapter_config.json");
    // What is written reads back to the same config: writing is a fixed point.
    const std::string written = lora_config_to_json_text(c);
    if (lora_config_to_json_text(lora_config_from_json_text(written, "round trip")) != written)
      std::abort();
    c.validate();
  } catch (const peft::Error&) {
  }
}

void tokenizer_json(const uint8_t* data, size_t size) {
  silence_warnings();
  const auto [json, text] = split2(data, size);
  const MemFile file(json);
  try {
    exercise(Tokenizer::from_file(file.path()), text);
  } catch (const peft::Error&) {
  }
}

void sentencepiece(const uint8_t* data, size_t size) {
  silence_warnings();
  const auto [model, text] = split2(data, size);
  io::write_file_atomically((scratch_dir() / "tokenizer.model").string(), model, "fuzz");
  try {
    exercise(Tokenizer::from_dir(scratch_dir().string()), text);
  } catch (const peft::Error&) {
  }
}

void chat_template(const uint8_t* data, size_t size) {
  const auto [tmpl, messages_text] = split2(data, size);
  nlohmann::ordered_json messages = nlohmann::ordered_json::array(
      {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}});
  try {
    // Messages from the input when they parse (as a request body would give them).
    auto parsed = io::parse_ordered_json(messages_text, "fuzz", "messages");
    if (parsed.is_array()) messages = std::move(parsed);
  } catch (const peft::Error&) {
  }
  try {
    ChatTemplateOptions options;
    options.add_generation_prompt = size % 2 == 0;
    options.bos_token = "<s>";
    options.eos_token = "</s>";
    (void)render_chat_template_json(std::string(tmpl), messages, options);
  } catch (const peft::Error&) {
  }
}

void train_jsonl(const uint8_t* data, size_t size) {
  silence_warnings();
  // The demo model's tokenizer and chat template, so every line format is reached.
  static const Tokenizer tok = Tokenizer::from_dir(PEFT_SOURCE_DIR "/assets/demo/model");
  const MemFile file(std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    train::DataOptions options;
    options.max_length = size % 3 == 0 ? 0 : 64;
    const auto examples = train::load_jsonl(file.path(), &tok, options);
    train::check_token_ids(examples, tok.vocab_size(), file.path());
  } catch (const peft::Error&) {
  }
}

void launch_env(const uint8_t* data, size_t size) {
  // NAME=VALUE lines (the last value of a name wins), read as a launcher's environment.
  std::map<std::string, std::string> env;
  const std::string text(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    if (const size_t eq = line.find('='); eq != std::string::npos)
      env[line.substr(0, eq)] = line.substr(eq + 1);
    start = end + 1;
  }
  try {
    const auto e =
        dist::read_launch_environment([&](const std::string& name) -> std::optional<std::string> {
          auto it = env.find(name);
          return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
        });
    // What is accepted is consistent.
    if (e.rank < 0 || e.rank >= e.world_size || e.local_rank < 0 ||
        e.local_rank >= e.local_world_size || e.local_world_size > e.world_size ||
        (e.distributed() && (e.master_addr.empty() || e.master_port < 1 || e.master_port > 65535)))
      std::abort();
  } catch (const peft::Error&) {
  }
}

}  // namespace peft::fuzz
