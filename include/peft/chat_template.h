// Chat templates: renders the Jinja2 `chat_template` of a tokenizer_config.json into a prompt
// string, as transformers' tokenizer.apply_chat_template(messages, tokenize=False, ...) does
// (jinja2 with trim_blocks, lstrip_blocks and loopcontrols; raise_exception, strftime_now and
// tojson as transformers).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace peft {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant", "tool", ...
  std::string content;  // the message text
};

struct ChatTemplateOptions {
  // Append the header that opens the assistant's turn (transformers: add_generation_prompt).
  bool add_generation_prompt = false;
  // Exposed to the template as bos_token / eos_token, like transformers' special_tokens_map.
  std::string bos_token, eos_token;
  // Further template variables, as transformers' **kwargs: {"tools": [...], "date_string": "26 Jul
  // 2024", "builtin_tools": [...], "pad_token": ...}. `tools` and `documents` are none unless given
  // here. ordered_json keeps key order, which tojson prints (a plain nlohmann::json converts, keys
  // sorted).
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

// Renders `tmpl` as transformers' apply_chat_template(messages, tokenize=False, ...) does. Throws
// ConfigError naming the line and column for a syntax error or an unsupported construct (include,
// extends, call blocks, recursive loops, unknown filters), for runtime errors (looking into an
// undefined value, bad operand types) and for raise_exception() calls, whose message it carries.
std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 const ChatTemplateOptions& options = {});

// Same, with messages given as a JSON list of objects: for fields beyond role and content, such as
// tool_calls ([{"type": "function", "function": {"name": ..., "arguments": {...}}}]) or list
// content. A separate name, as a braced message list would be ambiguous between two overloads.
std::string render_chat_template_json(const std::string& tmpl,
                                      const nlohmann::ordered_json& messages,
                                      const ChatTemplateOptions& options = {});

}  // namespace peft
