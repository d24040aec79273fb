// Chat templates render exactly as transformers' tokenizer.apply_chat_template(messages,
// tokenize=False) does: real templates from tests/fixtures/chat_templates/ and one small template
// per language feature. The cases and expected strings are
// tests/fixtures/chat_templates/*_cases.json, the output of render_reference.py there, which
// renders with jinja2 configured as transformers configures it (see the README).
#include "peft/chat_template.h"

#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

#include "peft/error.h"
#include "test_util.h"

namespace {

using Json = nlohmann::ordered_json;
using peft::ChatMessage;
using peft::ChatTemplateOptions;
using peft::render_chat_template;
using peft::render_chat_template_json;

// tests/fixtures/chat_templates/real_template_cases.json: one case per real template and
// conversation.
struct RealTemplateCase {
  std::string name;
  std::string file;  // under tests/fixtures/chat_templates/
  bool add_generation_prompt = false;
  std::string bos_token;
  std::string eos_token;
  Json messages;
  Json extra;         // further template variables
  std::string error;  // non-empty: the raise_exception() message the template must throw
  std::string expected;
};

// tests/fixtures/chat_templates/feature_cases.json: one small template per language feature.
struct FeatureCase {
  std::string name;
  std::string tmpl;
  std::string expected;
};

Json fixture_json(const std::string& name) {
  return Json::parse(peft::test::read_file(peft::test::fixture("chat_templates/" + name)));
}

std::vector<RealTemplateCase> real_template_cases() {
  std::vector<RealTemplateCase> out;
  for (const auto& j : fixture_json("real_template_cases.json")) {
    out.push_back({j.at("name"), j.at("file"), j.at("add_generation_prompt"), j.at("bos_token"),
                   j.at("eos_token"), j.at("messages"), j.at("extra"), j.at("error"),
                   j.at("expected")});
  }
  return out;
}

// Every feature template sees these variables (besides messages = [], bos_token = "", ...).
Json feature_variables() { return fixture_json("feature_cases.json").at("variables"); }

std::vector<FeatureCase> feature_cases() {
  std::vector<FeatureCase> out;
  const Json file = fixture_json("feature_cases.json");
  for (const auto& j : file.at("cases")) {
    out.push_back({j.at("name"), j.at("template"), j.at("expected")});
  }
  return out;
}

std::string error_of(const std::string& tmpl, const Json& extra = Json::object()) {
  ChatTemplateOptions options;
  options.extra = extra;
  try {
    render_chat_template(tmpl, std::vector<ChatMessage>{}, options);
  } catch (const peft::ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_ERROR(tmpl, needle) \
  EXPECT_NE(error_of(tmpl).find(needle), std::string::npos) << error_of(tmpl)

class ChatTemplateReal : public ::testing::TestWithParam<RealTemplateCase> {};

TEST_P(ChatTemplateReal, MatchesTransformers) {
  const RealTemplateCase& c = GetParam();
  const std::string tmpl = peft::test::read_file(peft::test::fixture("chat_templates/" + c.file));
  ASSERT_FALSE(tmpl.empty()) << c.file;
  ChatTemplateOptions options;
  options.add_generation_prompt = c.add_generation_prompt;
  options.bos_token = c.bos_token;
  options.eos_token = c.eos_token;
  options.extra = c.extra;
  const Json& messages = c.messages;
  if (!c.error.empty()) {
    try {
      render_chat_template_json(tmpl, messages, options);
      FAIL() << "expected raise_exception(\"" << c.error << "\")";
    } catch (const peft::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(c.error), std::string::npos) << e.what();
    }
    return;
  }
  EXPECT_EQ(render_chat_template_json(tmpl, messages, options), c.expected);
}

INSTANTIATE_TEST_SUITE_P(ChatTemplate, ChatTemplateReal, ::testing::ValuesIn(real_template_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

class ChatTemplateFeature : public ::testing::TestWithParam<FeatureCase> {};

TEST_P(ChatTemplateFeature, MatchesJinja2) {
  const FeatureCase& c = GetParam();
  ChatTemplateOptions options;
  static const Json variables = feature_variables();
  options.extra = variables;
  EXPECT_EQ(render_chat_template(c.tmpl, std::vector<ChatMessage>{}, options), c.expected)
      << c.tmpl;
}

INSTANTIATE_TEST_SUITE_P(ChatTemplate, ChatTemplateFeature, ::testing::ValuesIn(feature_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(ChatTemplate, ChatMessageListMatchesJsonMessages) {
  const std::string tmpl =
      peft::test::read_file(peft::test::fixture("chat_templates/qwen2_5.jinja"));
  const std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}};
  ChatTemplateOptions options;
  options.add_generation_prompt = true;
  const std::string expected =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
      "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(render_chat_template(tmpl, messages, options), expected);
  const Json json =
      Json::parse(R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}])");
  EXPECT_EQ(render_chat_template_json(tmpl, json, options), expected);
}

TEST(ChatTemplate, ExtraVariablesOverrideDefaults) {
  ChatTemplateOptions options;
  options.bos_token = "<s>";
  options.extra = {{"tools", Json::array({"t"})}, {"bos_token", "<B>"}};
  EXPECT_EQ(render_chat_template("{{ bos_token }}{{ tools | length }}{{ documents is none }}",
                                 std::vector<ChatMessage>{}, options),
            "<B>1True");
}

TEST(ChatTemplate, Llama32DefaultsToTodaysDate) {
  // Without date_string the Llama 3.2 template calls transformers' strftime_now("%d %b %Y").
  const std::string tmpl =
      peft::test::read_file(peft::test::fixture("chat_templates/llama3_2.jinja"));
  char today[64];
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::strftime(today, sizeof(today), "%d %b %Y", &local);
  const std::string out = render_chat_template(tmpl, std::vector<ChatMessage>{{"user", "Hi"}});
  EXPECT_NE(out.find(std::string("Today Date: ") + today + "\n"), std::string::npos) << out;
}

TEST(ChatTemplate, GenerationTagRendersItsBody) {
  // transformers registers {% generation %} (AssistantTracker) for return_assistant_tokens_mask.
  EXPECT_EQ(render_chat_template("a{% generation %}b{{ 1 + 1 }}{% endgeneration %}c",
                                 std::vector<ChatMessage>{}),
            "ab2c");
}

TEST(ChatTemplate, RaiseExceptionThrowsConfigErrorWithTheMessage) {
  const std::string msg = error_of("x\n  {{ raise_exception('Roles must alternate: ' ~ 3) }}");
  EXPECT_NE(msg.find("[chat_template]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Roles must alternate: 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 2, column 6"), std::string::npos) << msg;
  const std::string tmpl =
      peft::test::read_file(peft::test::fixture("chat_templates/mistral_instruct.jinja"));
  EXPECT_THROW(render_chat_template(tmpl, std::vector<ChatMessage>{{"user", "a"}, {"user", "b"}}),
               peft::ConfigError);
}

TEST(ChatTemplate, SyntaxErrorsNameTheLineAndColumn) {
  EXPECT_ERROR("{% if x %}\n  {{ x + }}\n{% endif %}",
               "line 2, column 10: unexpected '}}'; expected an expression");
  EXPECT_ERROR("ok\n{% for m in messages %}x",
               "line 2, column 25: unexpected end of template; expected 'else' or 'endfor'");
  EXPECT_ERROR("{% if true %}x{% endfor %}",
               "line 1, column 18: unknown tag 'endfor'; expected 'elif' or 'else' or 'endif'");
  EXPECT_ERROR("{{ 'abc }}", "line 1, column 4: string literal is never closed");
  EXPECT_ERROR("{{ x ]}}", "line 1, column 6: unexpected ']'");
  EXPECT_ERROR("{# never closed", "line 1, column 1: comment '{#' is never closed");
  EXPECT_ERROR("{{ x", "line 1, column 1: tag is never closed; expected '}}'");
  EXPECT_ERROR("{% break %}", "'break' outside of a for loop");
  EXPECT_ERROR("{{ 1 $ 2 }}", "unexpected character '$'");
}

TEST(ChatTemplate, UnsupportedConstructsAreErrors) {
  EXPECT_ERROR("{% include 'x.jinja' %}", "'{% include %}' is not supported");
  EXPECT_ERROR("{% extends 'base' %}", "'{% extends %}' is not supported");
  EXPECT_ERROR("{% call m() %}{% endcall %}", "'{% call %}' is not supported");
  EXPECT_ERROR("{% for x in xs recursive %}{% endfor %}", "recursive for loops are not supported");
  EXPECT_ERROR("{{ x | frobnicate }}", "line 1, column 8: no filter named 'frobnicate'");
  EXPECT_ERROR("{{ x is frobnicated }}", "no test named 'frobnicated'");
  EXPECT_ERROR("{{ range(*xs) }}", "*args and **kwargs in calls are not supported");
  EXPECT_ERROR("{% frob %}", "unknown tag 'frob'");
  // Inside an if statement jinja2 defers the check until the branch runs.
  EXPECT_ERROR("{% if true %}{{ 1 | frobnicate }}{% endif %}",
               "line 1, column 21: no filter named 'frobnicate'");
  EXPECT_ERROR("{% for x in [1] %}{% if x is frob %}{% endif %}{% endfor %}",
               "no test named 'frob'");
}

TEST(ChatTemplate, RuntimeErrorsAreConfigErrors) {
  EXPECT_ERROR("{{ missing.attr }}", "line 1, column 11: 'missing' is undefined");
  EXPECT_ERROR("{{ messages[0].content }}", "'messages[0]' is undefined");
  EXPECT_ERROR("{{ 'a' + 1 }}", "can only concatenate str (not \"int\") to str");
  EXPECT_ERROR("{{ 1 / 0 }}", "division by zero");
  EXPECT_ERROR("{{ missing + 'a' }}", "'missing' is undefined");
  EXPECT_ERROR("{{ 'a' < 1 }}", "'<' is not supported between instances of 'str' and 'int'");
  EXPECT_ERROR("{% for a, b in [1] %}{% endfor %}", "cannot unpack int into 2 names");
  EXPECT_ERROR("{% set x = 1 %}{% set x.y = 2 %}", "it is not a namespace");
  EXPECT_ERROR("{{ nothing() }}", "'nothing' is undefined");
  EXPECT_ERROR("{{ messages() }}", "'list' object is not callable");
  EXPECT_ERROR("{{ 'abc'.frob() }}", "'str' object has no method 'frob'");
  EXPECT_ERROR("{{ -'a' }}", "bad operand type for unary -: 'str'");
  EXPECT_ERROR("{{ 1 | tojson(indent=[2]) }}", "argument 'indent' must be an int");
}

TEST(ChatTemplate, UndefinedIsForgivingExceptWhenLookedInto) {
  EXPECT_EQ(
      render_chat_template(
          "[{{ nope }}|{{ nope | length }}|{{ nope is defined }}|{% for x in nope %}x{% endfor %}]",
          std::vector<ChatMessage>{}),
      "[|0|False|]");
}

}  // namespace
