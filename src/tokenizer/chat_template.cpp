// peft::render_chat_template: builds the variables transformers passes to the template (messages,
// tools=None, documents=None, add_generation_prompt, special tokens, **kwargs) and renders it.
#include "peft/chat_template.h"

#include <algorithm>
#include <string>
#include <vector>

#include "chat_template_ast.h"
#include "peft/error.h"

namespace peft {
namespace detail::jinja {

void fail(const SourcePos& pos, const std::string& message) {
  throw ConfigError("chat_template", "line " + std::to_string(pos.line) + ", column " +
                                         std::to_string(pos.column) + ": " + message);
}

void check_size(uint64_t size, const SourcePos& pos) {
  if (size > Limits::kMaxBytes) {
    fail(pos, "the result would hold " + std::to_string(size) + " bytes or items; the limit is " +
                  std::to_string(Limits::kMaxBytes) + " (hint: a hostile or broken template)");
  }
}

namespace {

// The nesting of `j`, counted no further than limit + 1.
int depth_up_to(const Json& j, int limit) {
  if (!j.is_array() && !j.is_object()) return 0;
  if (limit < 0) return 1;
  int deepest = 0;
  for (const auto& item : j) {
    deepest = std::max(deepest, depth_up_to(item, limit - 1));
    if (deepest > limit) break;
  }
  return deepest + 1;
}

}  // namespace

void check_depth(const Json& j, const SourcePos& pos, const std::string& what) {
  if (depth_up_to(j, Limits::kMaxValueDepth) > Limits::kMaxValueDepth) {
    fail(pos, what + " nests more than " + std::to_string(Limits::kMaxValueDepth) +
                  " levels (hint: a hostile template or message, e.g. a list put into itself in "
                  "a loop)");
  }
}

}  // namespace detail::jinja

std::string render_chat_template_json(const std::string& tmpl,
                                      const nlohmann::ordered_json& messages,
                                      const ChatTemplateOptions& options) {
  namespace jinja = detail::jinja;
  PEFT_CHECK(
      messages.is_array(), ConfigError, "chat_template",
      "messages is a JSON " << messages.type_name() << "; expected a list of message objects");
  PEFT_CHECK(options.extra.is_object(), ConfigError, "chat_template",
             "ChatTemplateOptions::extra is a JSON "
                 << options.extra.type_name() << "; expected an object of template variables");
  jinja::Json vars = {
      {"messages", messages},           {"tools", nullptr},
      {"documents", nullptr},           {"add_generation_prompt", options.add_generation_prompt},
      {"bos_token", options.bos_token}, {"eos_token", options.eos_token}};
  for (auto it = options.extra.begin(); it != options.extra.end(); ++it)
    vars[it.key()] = it.value();
  jinja::check_depth(vars, jinja::SourcePos{}, "the messages or template variables");
  const jinja::Body body = jinja::parse(jinja::tokenize(tmpl));
  return jinja::render(body, vars);
}

std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 const ChatTemplateOptions& options) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  return render_chat_template_json(tmpl, list, options);
}

}  // namespace peft
