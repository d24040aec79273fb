// Jinja2 parser for chat templates, expressions: jinja2/parser.py's grammar from parse_condexpr
// (a if b else c) down to parse_primary, so that filters bind tighter than '+', '-x | abs' filters
// the negation and comparisons chain.
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat_template_parser.h"

namespace peft::detail::jinja {

// A comma-separated list becomes a list literal (jinja2 builds a tuple).
ExprPtr Parser::parse_tuple() {
  const SourcePos pos = cur().pos;
  ExprPtr first = parse_expression();
  if (!at_op(",")) return first;
  auto list = make_expr(ExprKind::kList, pos);
  add_child(*list, std::move(first));
  while (skip_op(",")) {
    if (cur().kind == TokKind::kVarEnd || cur().kind == TokKind::kBlockEnd || at_op(")")) break;
    add_child(*list, parse_expression());
  }
  return list;
}

ExprPtr Parser::parse_expression() {
  const Nest nest(*this);
  ExprPtr expr = parse_or();
  while (at_name("if")) {
    const SourcePos pos = next().pos;
    auto cond = make_expr(ExprKind::kCond, pos);
    add_child(*cond, std::move(expr));
    add_child(*cond, parse_or());
    add_child(*cond, skip_name("else") ? parse_expression() : nullptr);
    expr = std::move(cond);
  }
  return expr;
}

ExprPtr Parser::binary(const char* op, const SourcePos& pos, ExprPtr lhs, ExprPtr rhs) {
  auto e = make_expr(ExprKind::kBinary, pos);
  e->name = op;
  add_child(*e, std::move(lhs));
  add_child(*e, std::move(rhs));
  return e;
}

ExprPtr Parser::parse_or() {
  ExprPtr lhs = parse_and();
  while (at_name("or")) {
    const SourcePos pos = next().pos;
    lhs = binary("or", pos, std::move(lhs), parse_and());
  }
  return lhs;
}

ExprPtr Parser::parse_and() {
  ExprPtr lhs = parse_not();
  while (at_name("and")) {
    const SourcePos pos = next().pos;
    lhs = binary("and", pos, std::move(lhs), parse_not());
  }
  return lhs;
}

ExprPtr Parser::parse_not() {
  if (!at_name("not")) return parse_compare();
  const Nest nest(*this);
  auto e = make_expr(ExprKind::kUnary, next().pos);
  e->name = "not";
  add_child(*e, parse_not());
  return e;
}

ExprPtr Parser::parse_compare() {
  const SourcePos pos = cur().pos;
  ExprPtr first = parse_math1();
  ExprPtr cmp;
  while (true) {
    std::string op;
    if (cur().kind == TokKind::kOp &&
        (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
         cur().text == ">" || cur().text == ">=")) {
      op = next().text;
    } else if (at_name("in")) {
      next();
      op = "in";
    } else if (at_name("not") && peek().kind == TokKind::kName && peek().text == "in") {
      next();
      next();
      op = "not in";
    } else {
      break;
    }
    if (!cmp) {
      cmp = make_expr(ExprKind::kCompare, pos);
      add_child(*cmp, std::move(first));
    }
    cmp->compare_ops.push_back(op);
    add_child(*cmp, parse_math1());
  }
  return cmp ? std::move(cmp) : std::move(first);
}

ExprPtr Parser::parse_math1() {
  ExprPtr lhs = parse_concat();
  while (at_op("+") || at_op("-")) {
    const Token& op = next();
    lhs = binary(op.text == "+" ? "+" : "-", op.pos, std::move(lhs), parse_concat());
  }
  return lhs;
}

ExprPtr Parser::parse_concat() {
  ExprPtr lhs = parse_math2();
  while (at_op("~")) {
    const SourcePos pos = next().pos;
    lhs = binary("~", pos, std::move(lhs), parse_math2());
  }
  return lhs;
}

ExprPtr Parser::parse_math2() {
  ExprPtr lhs = parse_pow();
  while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
    const Token& op = next();
    static const char* const kOps[] = {"*", "/", "//", "%"};
    const char* name = "*";
    for (const char* k : kOps) {
      if (op.text == k) name = k;
    }
    lhs = binary(name, op.pos, std::move(lhs), parse_pow());
  }
  return lhs;
}

ExprPtr Parser::parse_pow() {
  ExprPtr lhs = parse_unary(true);
  while (at_op("**")) {
    const SourcePos pos = next().pos;
    lhs = binary("**", pos, std::move(lhs), parse_unary(true));
  }
  return lhs;
}

ExprPtr Parser::parse_unary(bool with_filter) {
  ExprPtr node;
  if (at_op("-") || at_op("+")) {
    const Nest nest(*this);  // "- - - x" recurses here
    const Token& op = next();
    node = make_expr(ExprKind::kUnary, op.pos);
    node->name = op.text;
    add_child(*node, parse_unary(false));
  } else {
    node = parse_primary();
  }
  node = parse_postfix(std::move(node));
  if (with_filter) node = parse_filter_expr(std::move(node));
  return node;
}

ExprPtr Parser::parse_primary() {
  const Token& tok = cur();
  switch (tok.kind) {
    case TokKind::kName: {
      next();
      if (tok.text == "loop") ++loop_refs_;
      auto e = make_expr(ExprKind::kLiteral, tok.pos);
      if (tok.text == "true" || tok.text == "True") {
        e->literal = true;
      } else if (tok.text == "false" || tok.text == "False") {
        e->literal = false;
      } else if (tok.text == "none" || tok.text == "None") {
        e->literal = nullptr;
      } else {
        e->kind = ExprKind::kName;
        e->name = tok.text;
      }
      return e;
    }
    case TokKind::kString: {
      auto e = make_expr(ExprKind::kLiteral, tok.pos);
      std::string s;
      while (cur().kind == TokKind::kString) s += next().text;  // adjacent literals concatenate
      e->literal = s;
      return e;
    }
    case TokKind::kInt:
    case TokKind::kFloat: {
      next();
      auto e = make_expr(ExprKind::kLiteral, tok.pos);
      try {
        if (tok.kind == TokKind::kInt) {
          e->literal = static_cast<int64_t>(std::stoll(tok.text));
        } else {
          e->literal = std::stod(tok.text);
        }
      } catch (const std::exception&) {
        fail(tok.pos, "number literal '" + tok.text + "' is out of range");
      }
      return e;
    }
    default:
      break;
  }
  if (at_op("(")) {
    next();
    if (skip_op(")")) return make_expr(ExprKind::kList, tok.pos);  // empty tuple
    ExprPtr e = parse_tuple();
    expect_op(")");
    return e;
  }
  if (at_op("[") || at_op("{")) {
    const bool is_dict = at_op("{");
    next();
    auto e = make_expr(is_dict ? ExprKind::kDict : ExprKind::kList, tok.pos);
    const char* close = is_dict ? "}" : "]";
    while (!at_op(close)) {
      if (!e->children.empty()) {
        expect_op(",");
        if (at_op(close)) break;
      }
      add_child(*e, parse_expression());
      if (is_dict) {
        expect_op(":");
        add_child(*e, parse_expression());
      }
    }
    next();
    return e;
  }
  unexpected("an expression");
}

ExprPtr Parser::parse_postfix(ExprPtr node) {
  while (true) {
    if (at_op(".")) {
      const SourcePos pos = next().pos;
      if (cur().kind == TokKind::kInt) {  // x.0 is x[0]
        auto e = make_expr(ExprKind::kGetItem, pos);
        add_child(*e, std::move(node));
        auto idx = make_expr(ExprKind::kLiteral, cur().pos);
        idx->literal = static_cast<int64_t>(std::stoll(next().text));
        add_child(*e, std::move(idx));
        node = std::move(e);
        continue;
      }
      auto e = make_expr(ExprKind::kGetAttr, pos);
      e->name = expect_name();
      add_child(*e, std::move(node));
      node = std::move(e);
    } else if (at_op("[")) {
      node = parse_subscript(std::move(node));
    } else if (at_op("(")) {
      node = parse_call(std::move(node));
    } else {
      return node;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr node) {
  const SourcePos pos = next().pos;  // '['
  ExprPtr parts[3];
  int colons = 0;
  while (!at_op("]")) {
    if (skip_op(":")) {
      if (++colons > 2) unexpected("']'");
      continue;
    }
    if (parts[colons]) unexpected("':' or ']'");
    parts[colons] = parse_expression();
  }
  next();
  if (colons == 0) {
    if (!parts[0]) fail(pos, "empty subscript; expected an index or a slice");
    auto e = make_expr(ExprKind::kGetItem, pos);
    add_child(*e, std::move(node));
    add_child(*e, std::move(parts[0]));
    return e;
  }
  auto e = make_expr(ExprKind::kSlice, pos);
  add_child(*e, std::move(node));
  for (auto& p : parts) add_child(*e, std::move(p));
  return e;
}

void Parser::parse_args(Expr& e) {
  expect_op("(");
  while (!at_op(")")) {
    if (at_op("*") || at_op("**")) fail(cur().pos, "*args and **kwargs in calls are not supported");
    if (cur().kind == TokKind::kName && peek().kind == TokKind::kOp && peek().text == "=") {
      std::string key = next().text;
      next();
      {
        ExprPtr value = parse_expression();
        e.height = std::max(e.height, value->height + 1);
        e.kwargs.emplace_back(std::move(key), std::move(value));
      }
    } else {
      if (!e.kwargs.empty()) fail(cur().pos, "positional argument after a keyword argument");
      add_child(e, parse_expression());
    }
    if (!skip_op(",")) break;
  }
  expect_op(")");
}

ExprPtr Parser::parse_call(ExprPtr callee) {
  auto e = make_expr(ExprKind::kCall, callee->pos);
  add_child(*e, std::move(callee));
  parse_args(*e);
  return e;
}

ExprPtr Parser::parse_filter_expr(ExprPtr node) {
  while (true) {
    if (at_op("|")) {
      next();
      auto e = make_expr(ExprKind::kFilter, cur().pos);
      e->name = expect_name();
      add_child(*e, std::move(node));
      if (at_op("(")) parse_args(*e);
      node = std::move(e);
    } else if (at_name("is")) {
      next();
      auto e = make_expr(ExprKind::kTest, cur().pos);
      e->negated = skip_name("not");
      e->name = expect_name();
      add_child(*e, std::move(node));
      if (at_op("(")) {
        parse_args(*e);
      } else if ((cur().kind == TokKind::kName && !at_name("else") && !at_name("or") &&
                  !at_name("and") && !at_name("is")) ||
                 cur().kind == TokKind::kString || cur().kind == TokKind::kInt ||
                 cur().kind == TokKind::kFloat || at_op("[") || at_op("{")) {
        add_child(*e, parse_postfix(parse_primary()));  // "is divisibleby 3"
      }
      node = std::move(e);
    } else if (at_op("(")) {
      node = parse_call(std::move(node));
    } else {
      return node;
    }
  }
}

// jinja2 rejects an unknown filter or test when compiling, except inside an if statement or an
// inline if-expression ("soft" frames), where the error waits until the branch runs.
void Parser::check_names(const Expr& e) const {
  if (soft_ || e.kind == ExprKind::kCond) return;
  if (e.kind == ExprKind::kFilter && !is_known_filter(e.name)) {
    fail(e.pos, "no filter named '" + e.name + "'");
  }
  if (e.kind == ExprKind::kTest && !is_known_test(e.name))
    fail(e.pos, "no test named '" + e.name + "'");
  for (const auto& child : e.children) {
    if (child) check_names(*child);
  }
  for (const auto& kv : e.kwargs) check_names(*kv.second);
}

}  // namespace peft::detail::jinja
