// Private to the chat-template renderer: the parser shared by chat_template_parser.cpp (statements)
// and chat_template_expr_parser.cpp (expressions, with jinja2's precedence).
#pragma once

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "chat_template_ast.h"

namespace peft::detail::jinja {

ExprPtr make_expr(ExprKind kind, const SourcePos& pos);
// Appends `child` (may be null) to parent.children, keeping parent.height; fails past
// Limits::kMaxExprHeight (a chain of 100,000 '+' is a tree that deep).
void add_child(Expr& parent, ExprPtr child);
std::string describe_token(const Token& t);  // for "unexpected '}}'"

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}
  Body parse_template();

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t n = 1) const { return t_[std::min(i_ + n, t_.size() - 1)]; }
  const Token& next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }
  bool at_op(const char* op) const { return cur().kind == TokKind::kOp && cur().text == op; }
  bool at_name(const char* name) const {
    return cur().kind == TokKind::kName && cur().text == name;
  }
  bool skip_op(const char* op) {
    if (!at_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!at_name(name)) return false;
    next();
    return true;
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    fail(cur().pos, "unexpected " + describe_token(cur()) + "; expected " + expected);
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) unexpected(std::string("'") + op + "'");
  }
  std::string expect_name() {
    if (cur().kind != TokKind::kName) unexpected("a name");
    return next().text;
  }
  void expect_block_end() {
    if (cur().kind != TokKind::kBlockEnd) unexpected("'%}'");
    next();
  }

  // Statements (chat_template_parser.cpp).
  Body parse_body(const std::set<std::string>& ends, std::string& end);
  Node parse_statement(const SourcePos& pos, const std::set<std::string>& outer_ends);
  Node parse_if(const SourcePos& pos);
  Node parse_for(const SourcePos& pos);
  Node parse_set(const SourcePos& pos);
  Node parse_macro(const SourcePos& pos);

  // Expressions (chat_template_expr_parser.cpp), from the loosest binding to the tightest.
  ExprPtr parse_tuple();
  ExprPtr parse_expression();
  ExprPtr binary(const char* op, const SourcePos& pos, ExprPtr lhs, ExprPtr rhs);
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_math1();   // + -
  ExprPtr parse_concat();  // ~
  ExprPtr parse_math2();   // * / // %
  ExprPtr parse_pow();
  ExprPtr parse_unary(bool with_filter);
  ExprPtr parse_primary();
  ExprPtr parse_postfix(ExprPtr node);  // .attr [index] (call)
  ExprPtr parse_subscript(ExprPtr node);
  void parse_args(Expr& e);
  ExprPtr parse_call(ExprPtr callee);
  ExprPtr parse_filter_expr(ExprPtr node);  // | filter, is test
  void check_names(const Expr& e) const;    // unknown filters and tests

  // One level of nesting (a block, a parenthesis, a unary operator) while it lives; fails past
  // Limits::kMaxParseDepth (100,000 parentheses would otherwise overflow the stack).
  class Nest {
   public:
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.depth_ > Limits::kMaxParseDepth) {
        --p_.depth_;
        fail(p_.cur().pos, "the template nests more than " +
                               std::to_string(Limits::kMaxParseDepth) +
                               " levels (blocks, parentheses or operators) (hint: a hostile or "
                               "broken template)");
      }
    }
    ~Nest() { --p_.depth_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

   private:
    Parser& p_;
  };

  const std::vector<Token>& t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  int64_t loop_refs_ = 0;  // names "loop" parsed so far
  bool soft_ = false;      // inside an if statement: unknown filters and tests fail only when run
};

}  // namespace peft::detail::jinja
