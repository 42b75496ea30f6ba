"""The calculator tool the chat model can call: safe arithmetic on the text between
`<|python_start|>` and `<|python_end|>`.

The model's text is untrusted, so it is never handed to eval/exec. It is parsed with `ast` and walked
against an allow-list: int/float literals, + - * / // % **, unary + and -, parentheses, and one method
call, `"<string literal>".count("<string literal>")` (nanochat's tool for "how many r in strawberry").
Everything else (names, attributes, subscripts, other calls, comprehensions, lambdas, strings outside
.count) is refused.

It cannot hang or exhaust memory: the input length is bounded, every integer operand and result is
bounded in bits *before* the operation runs (so 10**10**10 is refused, not computed), and a deadline is
checked at every node as a second guard. With those bounds each node costs microseconds, so a
cooperative deadline is enough; it also works off the main thread (the chat UI), where signal.alarm
would not.

`run_calculator` returns the result as a string, or None when the expression is refused or fails.
Failures include division or modulo by zero, overflow, and complex results: None, never an error
string, so the engine has one "tool gave nothing" path.
"""

import ast
import math
import operator
import time

MAX_EXPR_CHARS = 1000   # GSM8K-style tool calls are a few dozen characters; .count() strings a sentence
MAX_INT_BITS = 4096     # ~1233 decimal digits: far beyond any answer, far below anything slow to compute
MAX_DEPTH = 250         # nesting of operations (a 100-term sum is 100 deep; parentheses add no nodes)
TIME_LIMIT_S = 0.25

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _Refused(Exception):
    """The expression is outside the allow-list or its bounds."""


def run_calculator(expr: str) -> str | None:
    """Evaluate a safe arithmetic expression; the result as a string, or None when refused or failed."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    expr = expr.strip()
    if not expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        value = _Evaluator(deadline=time.monotonic() + TIME_LIMIT_S).visit(tree.body, depth=0)
    except (_Refused, SyntaxError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError):
        return None
    return format_number(value)


def format_number(value: int | float) -> str | None:
    """Ints as ints; floats to 12 significant digits with trailing zeros stripped (0.1+0.2 -> "0.3",
    4/2 -> "2"); None for inf/nan."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return None
    if value == 0:
        return "0"  # also turns -0.0 into "0"
    return f"{value:.12g}"


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def visit(self, node: ast.AST, depth: int) -> int | float:
        if depth > MAX_DEPTH:
            raise _Refused("too deeply nested")
        if time.monotonic() > self.deadline:
            raise _Refused("time limit")
        if isinstance(node, ast.Constant):
            return _number(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.visit(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            left = self.visit(node.left, depth + 1)
            right = self.visit(node.right, depth + 1)
            return _binary(node.op, left, right)
        if isinstance(node, ast.Call):
            return _string_count(node)
        raise _Refused(f"{type(node).__name__} is not allowed")


def _number(value: object) -> int | float:
    # type() not isinstance(): bool is an int subclass, and True/False are not numbers to a calculator
    if type(value) is int:
        return _check_int(value)
    if type(value) is float:
        return value
    raise _Refused(f"literal {type(value).__name__} is not allowed")


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise _Refused("integer too large")
    return value


def _binary(op: ast.operator, left: int | float, right: int | float) -> int | float:
    both_int = type(left) is int and type(right) is int
    # Bound integer work before doing it: the cost of * and ** grows with the operands' sizes.
    if both_int and isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        raise _Refused("product too large")
    if isinstance(op, ast.Pow):
        return _power(left, right)
    result = _BINARY_OPS[type(op)](left, right)
    return _check_int(result) if type(result) is int else _check_float(result)


def _power(base: int | float, exponent: int | float) -> int | float:
    if type(base) is int and type(exponent) is int and exponent >= 0:
        if abs(base) > 1 and (base.bit_length() - 1) * exponent > MAX_INT_BITS:
            raise _Refused("power too large")
        if abs(base) <= 1 and exponent > MAX_INT_BITS:
            raise _Refused("exponent too large")  # cheap to compute, but no calculator needs it
        return _check_int(base**exponent)
    # Float (or negative-exponent) powers: floats cannot grow without bound, they overflow (an
    # ArithmeticError, refused by the caller) or come back complex for a negative base.
    result = float(base) ** float(exponent)
    if isinstance(result, complex):
        raise _Refused("complex result")
    return _check_float(result)


def _check_float(value: float) -> float:
    if not math.isfinite(value):
        raise _Refused("result is not finite")
    return value


def _string_count(node: ast.Call) -> int:
    """The one allowed call: "<literal>".count("<literal>")."""
    func = node.func
    is_count = (
        isinstance(func, ast.Attribute)
        and func.attr == "count"
        and isinstance(func.value, ast.Constant)
        and type(func.value.value) is str
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and type(node.args[0].value) is str
    )
    if not is_count:
        raise _Refused("only \"string\".count(\"string\") calls are allowed")
    return func.value.value.count(node.args[0].value)
