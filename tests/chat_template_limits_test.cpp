// Chat templates from a stranger: deep nesting, endless loops, recursion and huge values end in a
// ConfigError naming the template position, never a stack overflow, a hang or an allocation of
// the requested size.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "peft/chat_template.h"
#include "peft/error.h"

namespace {

using peft::ChatMessage;
using peft::render_chat_template;

const std::vector<ChatMessage> kMessages = {{"user", "hi"}};

// The message of the ConfigError that rendering `tmpl` throws ("" when it renders).
std::string error_of(const std::string& tmpl) {
  try {
    render_chat_template(tmpl, kMessages);
  } catch (const peft::ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(ChatTemplateLimits, DeepNestingIsAnErrorNotAStackOverflow) {
  // 100,000 parentheses.
  EXPECT_NE(error_of("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}")
                .find("nests more than"),
            std::string::npos);
  // 20,000 nested if blocks.
  EXPECT_NE(error_of(repeat("{% if true %}", 20000) + "x" + repeat("{% endif %}", 20000))
                .find("nests more than"),
            std::string::npos);
  // A chain of 100,000 '+' (a left-deep tree), 100,000 'not' and 100,000 unary '-'.
  EXPECT_NE(error_of("{{ 1" + repeat(" + 1", 100000) + " }}").find("nests more than"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + repeat("not ", 100000) + "1 }}").find("nests more than"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + repeat("-", 100000) + "1 }}").find("nests more than"),
            std::string::npos);
  // Real templates nest far less and still render.
  EXPECT_EQ(render_chat_template("{{ " + std::string(50, '(') + "1" + std::string(50, ')') + " }}",
                                 kMessages),
            "1");
}

TEST(ChatTemplateLimits, RecursionAndEndlessLoopsStop) {
  EXPECT_NE(
      error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nests more than"),
      std::string::npos);
  // Two nested range(99999) loops: 10^10 iterations.
  EXPECT_NE(error_of("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                     "{% endfor %}")
                .find("steps"),
            std::string::npos);
  // Bounded recursion renders.
  EXPECT_EQ(render_chat_template(
                "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                "{{ f(5) }}",
                kMessages),
            "54321");
  // 1 ** 10**18 is answered without looping.
  EXPECT_EQ(render_chat_template("{{ 1 ** 1000000000000000000 }}", kMessages), "1");
}

TEST(ChatTemplateLimits, HugeValuesAreRefusedBeforeAllocating) {
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("the limit is"), std::string::npos);
  EXPECT_NE(error_of("{{ [1, 2] * 100000000000 }}").find("the limit is"), std::string::npos);
  EXPECT_NE(error_of("{{ '' * 1000000000000000000 }}").find("the limit is"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' | indent(100000000000) }}").find("the limit is"), std::string::npos);
  EXPECT_NE(error_of("{{ [1] | tojson(indent=100000000000) }}").find("the limit is"),
            std::string::npos);
  // Doubling a string in a loop: stops at the size limit.
  EXPECT_NE(error_of("{% set ns = namespace(s='x') %}{% for i in range(100) %}"
                     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}")
                .find("the limit is"),
            std::string::npos);
  // A list put into itself 100,000 times (copying or printing it would recurse that deep).
  EXPECT_NE(error_of("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                     "{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}")
                .find("nests more than 128 levels"),
            std::string::npos);
  EXPECT_EQ(render_chat_template("{{ 'ab' * 3 }}", kMessages), "ababab");
}

}  // namespace
