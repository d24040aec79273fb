// {"messages": [...]} examples: the conversation rendered with the tokenizer's chat template, loss
// on the assistant turns only (TRL's assistant_only_loss, found by rendering growing prefixes of
// the conversation).
#include "peft/chat_template.h"
#include "peft/error.h"
#include "peft/tokenizer.h"
#include "peft/train/data.h"

namespace peft::train {

namespace {

// Divergence from PEFT/transformers: a tokenizer without a chat template is an error there; ChatML
// is used here.
constexpr const char* kChatMl =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

}  // namespace

Example tokenize_conversation(const std::vector<std::pair<std::string, std::string>>& messages,
                              const Tokenizer& tokenizer) {
  const std::string tmpl = tokenizer.chat_template().value_or(kChatMl);
  ChatTemplateOptions base;
  if (auto id = tokenizer.bos_token_id()) base.bos_token = tokenizer.id_to_token(*id).value_or("");
  if (auto id = tokenizer.eos_token_id()) base.eos_token = tokenizer.id_to_token(*id).value_or("");
  std::vector<ChatMessage> all;
  for (const auto& [role, content] : messages) all.push_back({role, content});
  auto render = [&](size_t count, bool generation_prompt) {
    ChatTemplateOptions o = base;
    o.add_generation_prompt = generation_prompt;
    return render_chat_template(
        tmpl, std::vector<ChatMessage>(all.begin(), all.begin() + static_cast<long>(count)), o);
  };
  const std::string full = render(all.size(), false);
  Example ex;
  ex.input_ids = tokenizer.encode(full, /*add_special_tokens=*/false);
  ex.labels.assign(ex.input_ids.size(), -100);
  // Each assistant turn is located as: the text up to the rendered generation prompt before it (a
  // prefix of the whole conversation), then the message's content; the tokens of the content are
  // learned, plus the special token that closes the turn (<|eot_id|>, <|im_end|>, </s>, ...).
  // Templates that always append a generation header (Llama 3's first one) or close turns with
  // plain text are handled alike.
  auto is_special = [&](int64_t id) {
    return tokenizer.decode({id}, /*skip_special_tokens=*/true).empty();
  };
  bool any_assistant = false;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].role != "assistant") continue;
    any_assistant = true;
    const std::string before = render(i, true);
    const std::string content = trim(all[i].content);
    const size_t pos = full.compare(0, before.size(), before) == 0
                           ? full.find(content, before.size())
                           : std::string::npos;
    if (pos == std::string::npos || content.empty()) {
      throw ConfigError(
          "chat_template",
          "cannot locate assistant message " + std::to_string(i + 1) +
              " in the rendered conversation (the template does not render a prefix of the "
              "conversation the same way, or the message is empty) (hint: use {\"prompt\","
              "\"completion\"} lines for this template)");
    }
    const size_t start = tokenizer.encode(full.substr(0, pos), false).size();
    size_t end = std::min(tokenizer.encode(full.substr(0, pos + content.size()), false).size(),
                          ex.input_ids.size());
    if (end < ex.input_ids.size() && is_special(ex.input_ids[end])) ++end;
    for (size_t t = start; t < end; ++t) ex.labels[t] = ex.input_ids[t];
  }
  PEFT_CHECK(any_assistant, ConfigError, "chat_template",
             "the conversation has no \"assistant\" message, so nothing would be learned");
  return ex;
}

}  // namespace peft::train
