// Evaluates a parsed chat template: expressions with jinja2's undefined and attribute rules, and
// statements with its scoping (each loop iteration and each macro call gets its own scope;
// if-blocks do not; namespace() objects are the way out of a loop).
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "chat_template_ast.h"

namespace peft::detail::jinja {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const Json& variables) {
    frames_.push_back(Frame{});
    for (auto it = variables.begin(); it != variables.end(); ++it) {
      frames_[0].vars[it.key()] = Value::of(it.value());
    }
    for (const char* fn : {"raise_exception", "range", "namespace", "strftime_now", "dict"}) {
      if (!frames_[0].vars.count(fn)) {
        Value f;
        f.kind = Value::Kind::kCallable;
        f.callable = fn;
        frames_[0].vars[fn] = f;
      }
    }
  }

  std::string run(const Body& body) {
    std::string out;
    exec(body, out);
    return out;
  }

 private:
  struct Frame {
    std::map<std::string, Value> vars;
    size_t parent = 0;  // lookups continue here (frame 0, the template's globals, has none)
  };

  // ------------------------------------------------------------------------------------- limits

  // Counts one step of work and one level of nesting for as long as it lives; fails past
  // Limits::kMaxSteps steps in all or Limits::kMaxEvalDepth levels at once (a recursive macro, a
  // loop that does not end in useful time).
  class Step {
   public:
    Step(Renderer& r, const SourcePos& pos) : r_(r) {
      if (++r_.steps_ > Limits::kMaxSteps) {
        fail(pos, "the template ran more than " + std::to_string(Limits::kMaxSteps) +
                      " steps (hint: a loop or recursion that does not end in useful time)");
      }
      if (++r_.depth_ > Limits::kMaxEvalDepth) {
        --r_.depth_;
        fail(pos, "the template nests more than " + std::to_string(Limits::kMaxEvalDepth) +
                      " evaluations (hint: a macro that calls itself without end)");
      }
    }
    ~Step() { --r_.depth_; }
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

   private:
    Renderer& r_;
  };

  static void append(std::string& out, const std::string& text, const SourcePos& pos) {
    check_size(uint64_t{out.size()} + text.size(), pos);
    out += text;
  }

  // ------------------------------------------------------------------------------------- scopes

  const Value* find(const std::string& name) const {
    size_t i = frames_.size() - 1;
    while (true) {
      auto it = frames_[i].vars.find(name);
      if (it != frames_[i].vars.end()) return &it->second;
      if (i == 0) return nullptr;
      i = frames_[i].parent;
    }
  }

  void push_frame(size_t parent) { frames_.push_back(Frame{{}, parent}); }

  // ---------------------------------------------------------------------------------- statements

  Flow exec(const Body& body, std::string& out) {
    for (const Node& node : body) {
      const Flow flow = exec(node, out);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  Flow exec(const Node& node, std::string& out) {
    const Step step(*this, node.pos);
    if (const auto* text = std::get_if<TextNode>(&node.v)) {
      append(out, text->text, node.pos);
    } else if (const auto* output = std::get_if<OutputNode>(&node.v)) {
      append(out, to_str(eval(*output->expr)), node.pos);
    } else if (const auto* branch = std::get_if<IfNode>(&node.v)) {
      for (const auto& [cond, body] : branch->branches) {
        if (truthy(eval(*cond))) return exec(body, out);
      }
      return exec(branch->else_body, out);
    } else if (const auto* loop = std::get_if<ForNode>(&node.v)) {
      exec_for(*loop, node.pos, out);
    } else if (const auto* set = std::get_if<SetNode>(&node.v)) {
      exec_set(*set, node.pos);
    } else if (const auto* macro = std::get_if<MacroNode>(&node.v)) {
      Value fn;
      fn.kind = Value::Kind::kCallable;
      fn.callable = macro->name;
      fn.macro = macro;
      frames_.back().vars[macro->name] = fn;
    } else if (const auto* control = std::get_if<LoopControlNode>(&node.v)) {
      return control->is_break ? Flow::kBreak : Flow::kContinue;
    }
    return Flow::kNormal;
  }

  void bind_targets(const std::vector<std::string>& targets, const Value& item,
                    const SourcePos& pos) {
    auto& vars = frames_.back().vars;
    if (targets.size() == 1) {
      vars[targets[0]] = item;
      return;
    }
    if (!item.is_data() || !item.json().is_array() || item.json().size() != targets.size()) {
      fail(pos, "cannot unpack " + type_name(item) + " into " + std::to_string(targets.size()) +
                    " names");
    }
    for (size_t k = 0; k < targets.size(); ++k)
      vars[targets[k]] = Value::alias(item, item.json()[k]);
  }

  void exec_for(const ForNode& loop, const SourcePos& pos, std::string& out) {
    std::vector<Value> items = iterate(eval(*loop.iterable), loop.iterable->pos);
    const size_t outer = frames_.size() - 1;
    if (loop.filter) {
      std::vector<Value> kept;
      for (const Value& item : items) {
        push_frame(outer);
        bind_targets(loop.targets, item, pos);
        if (truthy(eval(*loop.filter))) kept.push_back(item);
        frames_.pop_back();
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(loop.else_body, out);
      return;
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      const Step step(*this, pos);
      push_frame(outer);
      const auto at = static_cast<size_t>(i);
      if (loop.uses_loop) {
        Json info = {
            {"index", i + 1},  {"index0", i},        {"revindex", n - i}, {"revindex0", n - i - 1},
            {"first", i == 0}, {"last", i == n - 1}, {"length", n},       {"depth", 1},
            {"depth0", 0}};
        if (i > 0 && items[at - 1].is_data()) info["previtem"] = items[at - 1].json();
        if (i + 1 < n && items[at + 1].is_data()) info["nextitem"] = items[at + 1].json();
        frames_.back().vars["loop"] = Value::of(std::move(info));
      }
      bind_targets(loop.targets, items[at], pos);
      const Flow flow = exec(loop.body, out);
      frames_.pop_back();
      if (flow == Flow::kBreak) break;
    }
  }

  void exec_set(const SetNode& set, const SourcePos& pos) {
    Value value;
    if (set.value) {
      value = eval(*set.value);
    } else {
      std::string body;
      exec(set.body, body);
      value = Value::of(body);
    }
    if (!set.attr.empty()) {
      // Values carried across loop iterations live in namespaces: bounding their depth here
      // bounds every value's (each iteration could wrap the last value in a list).
      if (value.is_data()) check_depth(value.json(), pos, "the value of '" + set.attr + "'");
      const Value* ns = find(set.names[0]);
      if (!ns || ns->kind != Value::Kind::kNamespace) {
        fail(pos, "cannot assign attribute '" + set.attr + "' on '" + set.names[0] +
                      "': it is not a namespace (hint: create it with namespace())");
      }
      if (Value* slot = ns->ns_attr(set.attr)) {
        *slot = value;
      } else {
        ns->ns->emplace_back(set.attr, value);
      }
      return;
    }
    if (set.names.size() == 1) {
      frames_.back().vars[set.names[0]] = value;
    } else {
      bind_targets(set.names, value, pos);
    }
  }

  // --------------------------------------------------------------------------------- expressions

  Args eval_args(const Expr& e, size_t first) {
    Args args;
    for (size_t i = first; i < e.children.size(); ++i)
      args.positional.push_back(eval(*e.children[i]));
    for (const auto& [key, value] : e.kwargs) args.named.emplace_back(key, eval(*value));
    return args;
  }

  // jinja2's getattr/getitem: missing keys are undefined, but looking into an undefined is an
  // error.
  Value get_item(const Value& obj, const Value& key, const std::string& what,
                 const SourcePos& pos) {
    if (obj.is_undefined()) fail(pos, "'" + obj.hint + "' is undefined");
    if (obj.kind == Value::Kind::kNamespace) {
      const Value* attr = key.is_data() && key.json().is_string()
                              ? obj.ns_attr(key.json().get<std::string>())
                              : nullptr;
      return attr ? *attr : Value::undefined(what);
    }
    if (!obj.is_data() || !key.is_data()) return Value::undefined(what);
    const Json& j = obj.json();
    const Json& k = key.json();
    if (j.is_object() && k.is_string()) {
      auto it = j.find(k.get<std::string>());
      return it == j.end() ? Value::undefined(what) : Value::alias(obj, *it);
    }
    if ((j.is_array() || j.is_string()) && (k.is_number_integer() || k.is_boolean())) {
      std::vector<std::string> chars;
      if (j.is_string()) chars = utf8_chars(j.get<std::string>());
      const auto size = static_cast<int64_t>(j.is_array() ? j.size() : chars.size());
      int64_t i = k.is_boolean() ? k.get<bool>() : k.get<int64_t>();
      if (i < 0) i += size;
      if (i < 0 || i >= size) return Value::undefined(what);
      const auto at = static_cast<size_t>(i);
      return j.is_array() ? Value::alias(obj, j[at]) : Value::of(chars[at]);
    }
    return Value::undefined(what);
  }

  Value slice(const Value& obj, const Expr& e) {
    if (obj.is_undefined()) fail(e.pos, "'" + obj.hint + "' is undefined");
    if (!obj.is_data() || !(obj.json().is_array() || obj.json().is_string())) {
      fail(e.pos, "'" + type_name(obj) + "' object is not subscriptable");
    }
    const Json& j = obj.json();
    std::vector<std::string> chars;
    if (j.is_string()) chars = utf8_chars(j.get<std::string>());
    const auto n = static_cast<int64_t>(j.is_array() ? j.size() : chars.size());
    int64_t bound[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      const Expr* part = e.children[static_cast<size_t>(k) + 1].get();
      if (!part) continue;
      const Value v = eval(*part);
      if (v.is_data() && v.json().is_null()) continue;
      if (!v.is_data() || !v.json().is_number_integer())
        fail(part->pos, "slice indices must be integers or None");
      bound[k] = v.json().get<int64_t>();
      given[k] = true;
    }
    const int64_t step = bound[2];
    if (step == 0) fail(e.pos, "slice step cannot be zero");
    // Python's slice.indices().
    auto clamp = [&](int64_t v, bool is_given, int64_t dflt) {
      if (!is_given) return dflt;
      if (v < 0) v += n;
      if (step > 0) return v < 0 ? 0 : (v > n ? n : v);
      return v < -1 ? -1 : (v > n - 1 ? n - 1 : v);
    };
    const int64_t start = clamp(bound[0], given[0], step > 0 ? 0 : n - 1);
    const int64_t stop = clamp(bound[1], given[1], step > 0 ? n : -1);
    Json out = j.is_array() ? Json::array() : Json("");
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      const auto at = static_cast<size_t>(i);
      if (j.is_array()) {
        out.push_back(j[at]);
      } else {
        out.get_ref<std::string&>() += chars[at];
      }
    }
    return Value::of(std::move(out));
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.children[0];
    if (callee.kind == ExprKind::kGetAttr) {  // method call on a string or dict
      const Value obj = eval(*callee.children[0]);
      if (obj.is_undefined()) fail(callee.pos, "'" + obj.hint + "' is undefined");
      Value result;
      if (call_method(obj, callee.name, eval_args(e, 1), e.pos, result)) return result;
      const Value attr = get_item(obj, Value::of(callee.name), callee.name, callee.pos);
      if (attr.kind != Value::Kind::kCallable) {
        fail(callee.pos, "'" + type_name(obj) + "' object has no method '" + callee.name + "'");
      }
      return invoke(attr, e);
    }
    const Value fn = eval(callee);
    if (fn.is_undefined()) fail(callee.pos, "'" + fn.hint + "' is undefined");
    if (fn.kind != Value::Kind::kCallable)
      fail(callee.pos, "'" + type_name(fn) + "' object is not callable");
    return invoke(fn, e);
  }

  Value invoke(const Value& fn, const Expr& e) {
    Args args = eval_args(e, 1);
    if (!fn.macro) return call_global(fn.callable, args, e.pos);
    const MacroNode& m = *fn.macro;
    if (args.positional.size() > m.params.size()) {
      fail(e.pos, "macro '" + m.name + "' takes " + std::to_string(m.params.size()) +
                      " arguments, got " + std::to_string(args.positional.size()));
    }
    push_frame(0);
    for (size_t i = 0; i < m.params.size(); ++i) {
      Value v = i < args.positional.size() ? args.positional[i] : Value::undefined(m.params[i]);
      for (const auto& [key, value] : args.named) {
        if (key == m.params[i]) v = value;
      }
      if (v.is_undefined() && i >= args.positional.size() && m.defaults[i])
        v = eval(*m.defaults[i]);
      frames_.back().vars[m.params[i]] = v;
    }
    for (const auto& [key, value] : args.named) {
      bool known = false;
      for (const auto& p : m.params) known = known || p == key;
      if (!known) fail(e.pos, "macro '" + m.name + "' has no argument named '" + key + "'");
    }
    std::string out;
    exec(m.body, out);
    frames_.pop_back();
    return Value::of(out);
  }

  // How an undefined value was reached, for "'messages[0].content' is undefined".
  static std::string describe(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kName:
        return e.name;
      case ExprKind::kGetAttr:
        return describe(*e.children[0]) + "." + e.name;
      case ExprKind::kGetItem: {
        const Expr& key = *e.children[1];
        return describe(*e.children[0]) + "[" +
               (key.kind == ExprKind::kLiteral ? repr(key.literal) : describe(key)) + "]";
      }
      case ExprKind::kLiteral:
        return repr(e.literal);
      default:
        return "(expression)";
    }
  }

  Value eval(const Expr& e) {
    const Step step(*this, e.pos);
    switch (e.kind) {
      case ExprKind::kLiteral:
        return Value::of(e.literal);
      case ExprKind::kName: {
        const Value* v = find(e.name);
        return v ? *v : Value::undefined(e.name);
      }
      case ExprKind::kList:
      case ExprKind::kDict: {
        Json out = e.kind == ExprKind::kList ? Json::array() : Json::object();
        for (size_t i = 0; i < e.children.size(); ++i) {
          const Value v = eval(*e.children[i]);
          if (e.kind == ExprKind::kList) {
            out.push_back(v.is_data() ? v.json() : Json());
            continue;
          }
          const Value val = eval(*e.children[++i]);
          out[to_str(v)] = val.is_data() ? val.json() : Json();
        }
        check_depth(out, e.pos, e.kind == ExprKind::kList ? "a list" : "a dict");
        return Value::of(std::move(out));
      }
      case ExprKind::kGetAttr:
        return get_item(eval(*e.children[0]), Value::of(e.name), describe(e), e.pos);
      case ExprKind::kGetItem:
        return get_item(eval(*e.children[0]), eval(*e.children[1]), describe(e), e.pos);
      case ExprKind::kSlice:
        return slice(eval(*e.children[0]), e);
      case ExprKind::kCall:
        return call(e);
      case ExprKind::kFilter:
        return apply_filter(e.name, eval(*e.children[0]), eval_args(e, 1), e.pos);
      case ExprKind::kTest:
        return Value::of(apply_test(e.name, eval(*e.children[0]), eval_args(e, 1), e.pos) !=
                         e.negated);
      case ExprKind::kUnary: {
        const Value v = eval(*e.children[0]);
        if (e.name == "not") return Value::of(!truthy(v));
        if (!v.is_data() || !(v.json().is_number() || v.json().is_boolean())) {
          fail(e.pos, "bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
        }
        if (e.name == "+") return v;
        return binary_op("-", Value::of(int64_t{0}), v, e.pos);
      }
      case ExprKind::kBinary: {
        const Value lhs = eval(*e.children[0]);
        if (e.name == "and") return truthy(lhs) ? eval(*e.children[1]) : lhs;
        if (e.name == "or") return truthy(lhs) ? lhs : eval(*e.children[1]);
        return binary_op(e.name, lhs, eval(*e.children[1]), e.pos);
      }
      case ExprKind::kCompare: {
        Value lhs = eval(*e.children[0]);
        for (size_t i = 0; i < e.compare_ops.size(); ++i) {
          Value rhs = eval(*e.children[i + 1]);
          const std::string& op = e.compare_ops[i];
          bool ok;
          if (op == "==")
            ok = equals(lhs, rhs);
          else if (op == "!=")
            ok = !equals(lhs, rhs);
          else if (op == "<")
            ok = less(lhs, rhs, e.pos);
          else if (op == ">")
            ok = less(rhs, lhs, e.pos);
          else if (op == "<=")
            ok = !less(rhs, lhs, e.pos);
          else if (op == ">=")
            ok = !less(lhs, rhs, e.pos);
          else if (op == "in")
            ok = contains(rhs, lhs, e.pos);
          else
            ok = !contains(rhs, lhs, e.pos);
          if (!ok) return Value::of(false);
          lhs = std::move(rhs);
        }
        return Value::of(true);
      }
      case ExprKind::kCond:
        if (truthy(eval(*e.children[1]))) return eval(*e.children[0]);
        return e.children[2] ? eval(*e.children[2]) : Value::undefined("else branch");
    }
    fail(e.pos, "unknown expression");
  }

  std::vector<Frame> frames_;
  int64_t steps_ = 0;
  int depth_ = 0;
};

}  // namespace

std::string render(const Body& body, const Json& variables) {
  return Renderer(variables).run(body);
}

}  // namespace peft::detail::jinja
