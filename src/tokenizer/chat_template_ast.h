// Private to the chat-template renderer: tokens, syntax tree and runtime values of the Jinja2
// subset that Hugging Face chat templates use (transformers' apply_chat_template renders them with
// jinja2).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace peft::detail::jinja {

// ordered_json keeps insertion order, which tojson and the Python repr print (Python dicts keep it
// too).
using Json = nlohmann::ordered_json;

// 1-based line and column (in bytes) in the template after newline normalization.
struct SourcePos {
  int line = 1;
  int column = 1;
};

// Throws ConfigError "[chat_template] line L, column C: <message>".
[[noreturn]] void fail(const SourcePos& pos, const std::string& message);

// Bounds on the work a template may ask for (a template may come from a stranger's
// tokenizer_config.json). Real chat templates stay far below each.
struct Limits {
  static constexpr int kMaxParseDepth = 100;  // nested blocks / parentheses in the source
  static constexpr int kMaxExprHeight = 400;  // levels of one expression's tree
  static constexpr int kMaxEvalDepth = 1000;  // nested evaluation, macro calls included
  static constexpr int64_t kMaxSteps =
      1'000'000;  // statements, expressions, iterations (a 1,000-message chat: ~10^5)
  static constexpr size_t kMaxBytes = size_t{64} << 20;  // any string or list, and the output
  static constexpr int kMaxValueDepth = 128;             // nesting of a value that is printed
};
// Fails at `pos` when a value of `size` bytes (or items) would pass Limits::kMaxBytes.
void check_size(uint64_t size, const SourcePos& pos);
// Fails at `pos` (naming `what`) when `j` nests deeper than Limits::kMaxValueDepth: values are
// copied and printed recursively, so no value may be deeper. Recurses at most that deep itself.
void check_depth(const Json& j, const SourcePos& pos, const std::string& what);

// ----------------------------------------------------------------------------------------------
// lexer

enum class TokKind {
  kText,        // template data between tags (whitespace control already applied)
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,        // identifier or keyword
  kString,      // string literal, escapes decoded
  kInt,         // integer literal (text without '_')
  kFloat,       // float literal (text without '_')
  kOp,          // operator or punctuation: + - * / // % ** ~ == != < <= > >= = . : | , ( ) [ ] { }
  kEof,
};

struct Token {
  TokKind kind = TokKind::kEof;
  std::string text;
  SourcePos pos;
};

// Splits a template into tokens with jinja2's rules as transformers configures them: trim_blocks
// and lstrip_blocks on, '-' / '+' whitespace control, comments dropped, {% raw %} kept verbatim,
// newlines normalized to '\n' and one trailing newline dropped (keep_trailing_newline=False).
std::vector<Token> tokenize(const std::string& source);

// ------------------------------------------------------------------------------------------ syntax
// tree

enum class ExprKind {
  kLiteral,  // literal
  kName,     // name
  kList,     // children = items
  kDict,     // children = key0, value0, key1, value1, ...
  kGetAttr,  // children[0] = object, name = attribute (x.name)
  kGetItem,  // children[0] = object, children[1] = key (x[key])
  kSlice,    // children[0] = object, children[1..3] = start, stop, step (each may be null)
  kCall,     // children[0] = callee, children[1..] = positional args, kwargs
  kFilter,   // children[0] = operand, children[1..] = args, kwargs, name = filter
  kTest,     // children[0] = operand, children[1..] = args, name = test, negated for "is not"
  kUnary,    // name = "-", "+" or "not", children[0] = operand
  kBinary,   // name = + - * / // % ** ~ and or, children = {lhs, rhs}
  kCompare,  // children = operands, compare_ops[i] sits between children[i] and children[i + 1]
  kCond,     // children = {then, condition, else (may be null)}: "then if condition else else"
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  SourcePos pos;
  Json literal;
  std::string name;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> compare_ops;  // "==", "!=", "<", "<=", ">", ">=", "in", "not in"
  bool negated = false;
  int height = 1;  // levels of this subtree (bounded: evaluating and freeing it recurse)
};

struct Node;
using Body = std::vector<Node>;

struct TextNode {
  std::string text;
};
struct OutputNode {  // {{ expr }}
  ExprPtr expr;
};
struct IfNode {  // {% if %}{% elif %}...{% else %}{% endif %}
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body else_body;
};
struct ForNode {  // {% for a, b in iterable if filter %}body{% else %}else_body{% endfor %}
  std::vector<std::string> targets;
  ExprPtr iterable;
  ExprPtr filter;  // may be null
  Body body;
  Body else_body;
  bool uses_loop = true;  // false: nothing in the body reads `loop` (its record is not built)
};
struct SetNode {  // {% set name = value %}, {% set name.attr = value %}, {% set name %}body{%
                  // endset %}
  std::vector<std::string> names;  // several for "set a, b = pair"
  std::string attr;                // non-empty for a namespace attribute
  ExprPtr value;                   // null for the block form
  Body body;
};
struct MacroNode {  // {% macro name(p1, p2=default) %}body{% endmacro %}
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when it has none
  Body body;
};
struct LoopControlNode {  // {% break %} / {% continue %} (jinja2.ext.loopcontrols, on in
                          // transformers)
  bool is_break = false;
};

struct Node {
  SourcePos pos;
  std::variant<TextNode, OutputNode, IfNode, ForNode, SetNode, MacroNode, LoopControlNode> v;
};

// Parses the token stream into a template body. Unknown tags, filters and tests are errors here, as
// in jinja2 (which checks filter and test names when compiling).
Body parse(const std::vector<Token>& tokens);

// ---------------------------------------------------------------------------------------------
// values

// A runtime value. Data is immutable and shared (the sandbox transformers uses forbids mutation),
// so subscripting aliases into the parent instead of copying it.
struct Value;
using NamespaceAttrs = std::vector<std::pair<std::string, Value>>;  // in assignment order

struct Value {
  enum class Kind {
    kUndefined,  // a missing variable, key or attribute: renders as "", is falsy, iterates as empty
    kData,       // none, bool, int, float, string, list or dict
    kNamespace,  // namespace(): the one mutable object ({% set ns.attr = ... %}), shared by
                 // reference
    kCallable,   // a global function (callable = its name) or a macro (macro != null)
  };
  Kind kind = Kind::kUndefined;
  std::shared_ptr<const Json> data;
  std::shared_ptr<NamespaceAttrs> ns;
  std::string callable;
  const MacroNode* macro = nullptr;
  std::string hint;     // kUndefined: what was looked up, for "'x' is undefined"
  bool markup = false;  // a string marked safe (jinja2 Markup): '+' HTML-escapes the other operand

  static Value undefined(std::string what);
  static Value of(Json j);
  // `child` must live inside *parent.data: shares ownership instead of copying.
  static Value alias(const Value& parent, const Json& child);

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_data() const { return kind == Kind::kData; }
  // Namespace attribute `name`, or null.
  Value* ns_attr(const std::string& name) const;
  const Json& json() const { return *data; }  // only for kData
};

// Python semantics over values (chat_template_values.cpp; printing in chat_template_format.cpp).
// `pos` locates errors.
std::string html_escape(const std::string& s);  // markupsafe.escape
bool truthy(const Value& v);
std::string to_str(const Value& v);  // Python str(); undefined -> ""
std::string repr(const Json& j);     // Python repr()
bool equals(const Value& a, const Value& b);
bool less(const Value& a, const Value& b, const SourcePos& pos);
Value binary_op(const std::string& op, const Value& a, const Value& b, const SourcePos& pos);
bool contains(const Value& container, const Value& item, const SourcePos& pos);
std::string type_name(const Value& v);  // Python's type name, for messages
std::vector<Value> iterate(const Value& v, const SourcePos& pos);  // for-loop items
int64_t length(const Value& v, const SourcePos& pos);
// Python json.dumps options, as transformers' tojson filter exposes them (its defaults:
// ensure_ascii=False, no indent, insertion order).
struct JsonStyle {
  bool pretty = false;  // indent given: one item per line
  std::string indent;   // per nesting level
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool ensure_ascii = false;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonStyle& style, const SourcePos& pos);

// Python str methods over UTF-8 (chat_template_text.cpp): strip() with str.isspace() or `chars`,
// code points, Unicode case mapping (without the expanding cases such as 'ß'.upper() == "SS").
std::string py_strip(const std::string& s, bool left, bool right,
                     const std::string* chars = nullptr);
std::vector<std::string> utf8_chars(const std::string& s);
std::string py_lower(const std::string& s);
std::string py_upper(const std::string& s);
std::string py_title(const std::string& s);       // str.title()
std::string py_capitalize(const std::string& s);  // str.capitalize()
bool py_is_lower(const std::string& s);           // str.islower()
bool py_is_upper(const std::string& s);           // str.isupper()
// str.replace(old, new, count) (count < 0: all) and str.split(sep, maxsplit) (sep not a string:
// split on runs of whitespace).
std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count);
Json py_split(const std::string& s, const Value& sep, int64_t maxsplit);

// Arguments of a filter, test, method or function call.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;

  // Keyword `name`, else positional `index`; undefined when absent.
  Value get(size_t index, const char* name) const;
  // Same, and it must be a string (missing is an error).
  const std::string& str(size_t index, const char* name, const SourcePos& pos) const;
  // Same, and it must be an int; `fallback` when absent or none.
  int64_t integer(size_t index, const char* name, int64_t fallback, const SourcePos& pos) const;
  // Without the first n positional arguments.
  Args drop(size_t n) const;
};
const std::string& expect_str(const Value& v, const std::string& what, const SourcePos& pos);

// Filters (chat_template_filters.cpp); tests, methods and global functions
// (chat_template_functions.cpp).
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);
bool is_global_function(const std::string& name);
Value apply_filter(const std::string& name, const Value& operand, const Args& args,
                   const SourcePos& pos);
bool apply_test(const std::string& name, const Value& operand, const Args& args,
                const SourcePos& pos);
// Returns false when `object` has no builtin method `name` (the caller then reports the error).
bool call_method(const Value& object, const std::string& name, const Args& args,
                 const SourcePos& pos, Value& result);
Value call_global(const std::string& name, const Args& args, const SourcePos& pos);

// Renders a parsed template with the given top-level variables (chat_template_eval.cpp).
std::string render(const Body& body, const Json& variables);

}  // namespace peft::detail::jinja
