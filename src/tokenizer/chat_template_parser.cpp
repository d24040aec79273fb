// Jinja2 parser for chat templates, statements: text, {{ }}, if, for, set, macro, break/continue
// and transformers' generation tag (jinja2/parser.py's parse_statement and subparse).
#include "chat_template_parser.h"

#include <algorithm>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace peft::detail::jinja {
namespace {

std::string quoted_list(const std::set<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += " or ";
    out += "'" + n + "'";
  }
  return out;
}

}  // namespace

ExprPtr make_expr(ExprKind kind, const SourcePos& pos) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->pos = pos;
  return e;
}

void add_child(Expr& parent, ExprPtr child) {
  if (child) {
    parent.height = std::max(parent.height, child->height + 1);
    if (parent.height > Limits::kMaxExprHeight) {
      fail(parent.pos, "an expression nests more than " + std::to_string(Limits::kMaxExprHeight) +
                           " levels (hint: a hostile or broken template)");
    }
  }
  parent.children.push_back(std::move(child));
}

std::string describe_token(const Token& t) {
  switch (t.kind) {
    case TokKind::kText:
      return "template text";
    case TokKind::kVarBegin:
      return "'{{'";
    case TokKind::kVarEnd:
      return "'}}'";
    case TokKind::kBlockBegin:
      return "'{%'";
    case TokKind::kBlockEnd:
      return "'%}'";
    case TokKind::kEof:
      return "end of template";
    case TokKind::kString:
      return "string literal";
    default:
      return "'" + t.text + "'";
  }
}

Body Parser::parse_template() {
  std::string end;
  return parse_body({}, end);
}

// Statements until a block whose tag is in `ends`; leaves the cursor after that tag name and
// stores it in `end`. With no `ends`, runs to the end of the template.
Body Parser::parse_body(const std::set<std::string>& ends, std::string& end) {
  Body body;
  while (true) {
    const Token& tok = cur();
    if (tok.kind == TokKind::kEof) {
      if (ends.empty()) return body;
      fail(tok.pos, "unexpected end of template; expected " + quoted_list(ends) +
                        " (hint: a block tag is never closed)");
    }
    if (tok.kind == TokKind::kText) {
      body.push_back(Node{tok.pos, TextNode{tok.text}});
      next();
      continue;
    }
    if (tok.kind == TokKind::kVarBegin) {
      next();
      ExprPtr e = parse_tuple();
      check_names(*e);
      if (cur().kind != TokKind::kVarEnd) unexpected("'}}'");
      next();
      body.push_back(Node{tok.pos, OutputNode{std::move(e)}});
      continue;
    }
    if (tok.kind != TokKind::kBlockBegin) unexpected("template text or a tag");
    next();
    const Token& name = cur();
    if (name.kind != TokKind::kName) unexpected("a tag name");
    if (ends.count(name.text)) {
      end = next().text;
      return body;
    }
    body.push_back(parse_statement(tok.pos, ends));
  }
}

Node Parser::parse_statement(const SourcePos& pos, const std::set<std::string>& outer_ends) {
  const Nest nest(*this);
  const Token& name = next();
  const std::string& tag = name.text;
  if (tag == "if") return parse_if(pos);
  if (tag == "for") return parse_for(pos);
  if (tag == "set") return parse_set(pos);
  if (tag == "macro") return parse_macro(pos);
  if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) fail(name.pos, "'" + tag + "' outside of a for loop");
    expect_block_end();
    return Node{pos, LoopControlNode{tag == "break"}};
  }
  if (tag == "generation") {  // transformers' AssistantTracker tag: renders its body unchanged
    expect_block_end();
    std::string end;
    Body body = parse_body({"endgeneration"}, end);
    expect_block_end();
    IfNode always;
    auto yes = make_expr(ExprKind::kLiteral, pos);
    yes->literal = true;
    always.branches.emplace_back(std::move(yes), std::move(body));
    return Node{pos, std::move(always)};
  }
  static const std::set<std::string> kUnsupported = {"include", "extends",   "block",  "import",
                                                     "from",    "call",      "filter", "with",
                                                     "do",      "autoescape"};
  if (kUnsupported.count(tag)) {
    fail(name.pos, "'{% " + tag + " %}' is not supported by peft's chat template renderer" +
                       " (hint: supported tags are if, for, set, macro, break, continue, raw)");
  }
  std::string msg = "unknown tag '" + tag + "'";
  if (!outer_ends.empty()) msg += "; expected " + quoted_list(outer_ends);
  fail(name.pos, msg);
}

Node Parser::parse_if(const SourcePos& pos) {
  IfNode node;
  std::string end;
  const bool saved_soft = soft_;
  soft_ = true;
  ExprPtr cond = parse_tuple();
  while (true) {
    expect_block_end();
    Body body = parse_body({"elif", "else", "endif"}, end);
    node.branches.emplace_back(std::move(cond), std::move(body));
    if (end != "elif") break;
    cond = parse_tuple();
  }
  if (end == "else") {
    expect_block_end();
    node.else_body = parse_body({"endif"}, end);
  }
  soft_ = saved_soft;
  expect_block_end();
  return Node{pos, std::move(node)};
}

Node Parser::parse_for(const SourcePos& pos) {
  ForNode node;
  do {
    node.targets.push_back(expect_name());
  } while (skip_op(","));
  if (!skip_name("in")) unexpected("'in'");
  node.iterable = parse_or();  // no conditional expression: "if" starts the loop filter
  check_names(*node.iterable);
  const bool saved_soft = soft_;
  soft_ = false;  // jinja2 compiles the loop in an inner, non-soft frame
  if (skip_name("if")) {
    node.filter = parse_expression();
    check_names(*node.filter);
  }
  if (at_name("recursive")) fail(cur().pos, "recursive for loops are not supported");
  expect_block_end();
  std::string end;
  ++loop_depth_;
  const int64_t loop_refs = loop_refs_;
  node.body = parse_body({"else", "endfor"}, end);
  node.uses_loop = loop_refs_ != loop_refs;
  --loop_depth_;
  if (end == "else") {
    expect_block_end();
    node.else_body = parse_body({"endfor"}, end);
  }
  soft_ = saved_soft;
  expect_block_end();
  return Node{pos, std::move(node)};
}

Node Parser::parse_set(const SourcePos& pos) {
  SetNode node;
  node.names.push_back(expect_name());
  if (skip_op(".")) {
    node.attr = expect_name();
  } else {
    while (skip_op(",")) node.names.push_back(expect_name());
  }
  if (skip_op("=")) {
    node.value = parse_tuple();
    check_names(*node.value);
    expect_block_end();
    return Node{pos, std::move(node)};
  }
  if (node.names.size() != 1 || !node.attr.empty()) unexpected("'='");
  expect_block_end();
  std::string end;
  node.body = parse_body({"endset"}, end);
  expect_block_end();
  return Node{pos, std::move(node)};
}

Node Parser::parse_macro(const SourcePos& pos) {
  MacroNode node;
  node.name = expect_name();
  expect_op("(");
  while (!at_op(")")) {
    if (!node.params.empty()) expect_op(",");
    node.params.push_back(expect_name());
    node.defaults.push_back(skip_op("=") ? parse_expression() : nullptr);
  }
  expect_op(")");
  expect_block_end();
  for (const auto& d : node.defaults) {
    if (d) check_names(*d);
  }
  std::string end;
  const int saved_depth = loop_depth_;
  const bool saved_soft = soft_;
  loop_depth_ = 0;
  soft_ = false;
  node.body = parse_body({"endmacro"}, end);
  loop_depth_ = saved_depth;
  soft_ = saved_soft;
  expect_block_end();
  return Node{pos, std::move(node)};
}

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_template(); }

}  // namespace peft::detail::jinja
