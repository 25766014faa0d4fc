"""The grammar of shape arithmetic that a ``.pt2`` archive may hand ``sympy.sympify`` or ``exec``.

:func:`check_expression` accepts what ``torch.export`` prints for symbolic sizes and guards,
and nothing that could run other code when evaluated (see :mod:`dyncal.archives`, routes 5-6).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["IDENT", "FQN", "check_expression"]

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""An identifier (ASCII): what names in generated code must be."""
FQN = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
"""A dotted path of identifiers (parameter and buffer paths)."""

_MAX_EXPR_CHARS = 20_000
_MAX_EXPR_DEPTH = 60
_MAX_EXPONENT = 64
_MAX_INT_DIGITS = 20


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d{1,3})?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_.+-]*'|\"[A-Za-z0-9_.+-]*\")"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|<<|>>|[-+*/%()<>,=\[\].&|]))"
)
_CMP = {"==", "!=", "<", "<=", ">", ">="}
_SYMBOL = re.compile(r"[a-z]{1,3}[0-9]{1,9}")
_SYMPY_FUNCTIONS = frozenset(
    """Add Mul Integer Rational Float Symbol Max Min Abs floor ceiling Mod sqrt
    Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan
    And Or Not Piecewise ExprCondPair
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    IntTrueDiv FloatTrueDiv TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
    IsNonOverlappingAndDenseIndicator""".split()
)
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_GUARD_FUNCTIONS = frozenset({"max", "min", "abs", "int", "float", "TrueDiv"})
_MATH = frozenset({"floor", "ceil", "trunc", "sqrt", "isnan"})
# Guards on attention reshapes print torch.sym_max(1, ...); the guard code runs with ``torch`` bound.
_TORCH_SYM = frozenset({"sym_max", "sym_min"})
_CONSTANTS = frozenset({"True", "False", "true", "false", "oo"})
_KEYWORDS = frozenset(
    """positive negative nonnegative nonpositive integer real finite infinite zero nonzero
    even odd rational commutative extended_real precision evaluate""".split()
)


class _ExprError(Exception):
    """Why an expression is refused."""


class _Expression:
    """Recursive-descent check of one expression; ``mode`` is ``sympy``, ``declare`` or ``guard``."""

    def __init__(self, text: str, mode: str, symbols: frozenset[str]) -> None:
        if len(text) > _MAX_EXPR_CHARS:
            raise _ExprError(f"longer than {_MAX_EXPR_CHARS} characters")
        self.mode = mode
        self.symbols = symbols
        self.found: set[str] = set()
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise _ExprError(f"unexpected {text[pos:].lstrip()[:12]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0
        # per power being parsed, the largest product of exponents of the powers inside its base:
        # (s0**2 + s0)**2 is fine (4), Pow(Pow(2, 64), 64) would be a 2**4096-sized number
        self.inner_powers: list[int] = [1]

    # -- helpers
    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind) or k == "end":
            raise _ExprError(f"expected {value or kind} at {v or 'the end'!r}")
        self.i += 1
        return v

    def at(self, *values: str) -> bool:
        k, v = self.peek()
        return k in ("op", "name") and v in values

    def check(self) -> None:
        self.expr()
        if self.i != len(self.tokens):
            raise _ExprError(f"unexpected {self.peek()[1]!r}")

    def nested(self, parse: Callable[[], None]) -> None:
        self.depth += 1
        if self.depth > _MAX_EXPR_DEPTH:
            raise _ExprError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        parse()
        self.depth -= 1

    # -- grammar, lowest precedence first
    def expr(self) -> None:
        self.disjunction()

    def disjunction(self) -> None:
        self.conjunction()
        while self.mode == "guard" and self.at("or"):
            self.take()
            self.conjunction()

    def conjunction(self) -> None:
        self.negation()
        while self.mode == "guard" and self.at("and"):
            self.take()
            self.negation()

    def negation(self) -> None:
        if self.mode == "guard" and self.at("not"):
            self.take()
            self.nested(self.negation)
        else:
            self.comparison()

    def comparison(self) -> None:
        self.bitwise()
        while self.at(*_CMP):
            self.take()
            self.bitwise()

    def bitwise(self) -> None:
        self.shift()
        while self.at("&", "|"):
            self.take()
            self.shift()

    def shift(self) -> None:
        self.arith()
        while self.at("<<", ">>"):
            self.take()
            self.arith()

    def arith(self) -> None:
        self.term()
        while self.at("+", "-"):
            self.take()
            self.term()

    def term(self) -> None:
        self.unary()
        while self.at("*", "/", "//", "%"):
            self.take()
            self.unary()

    def unary(self) -> None:
        if self.at("-", "+"):
            self.take()
            self.nested(self.unary)
        else:
            self.power()

    def power(self) -> None:
        if self.at("**"):
            raise _ExprError("'**' without a base")
        self.inner_powers.append(1)
        self.primary()
        if self.at("**"):
            self.take()
            self.raised(self.inner_powers.pop(), self.small_exponent())
        else:
            self.inner_powers[-1] = max(self.inner_powers[-1], self.inner_powers.pop())

    def raised(self, inner: int, exponent: int) -> None:
        """A power of ``exponent`` over a base whose own powers multiply to ``inner``; bounded together."""
        if inner > 1 and inner * max(exponent, 1) > _MAX_EXPONENT:
            raise _ExprError(f"a power of a power (exponents multiplying past {_MAX_EXPONENT})")
        self.inner_powers[-1] = max(self.inner_powers[-1], inner * max(exponent, 1))

    def small_exponent(self) -> int:
        """An exponent: a small integer literal (``2``, ``-1``, ``(2)``, ``Integer(2)``); its size."""
        parens = self.at("(")
        if parens:
            self.take()
        if self.at("Integer") and self.peek(1)[1] == "(":
            self.take()
            self.take("(")
            size = self.small_exponent()
            self.take(")")
        else:
            if self.at("-"):
                self.take()
            n = self.take(kind="num")
            if not n.isdigit() or int(n) > _MAX_EXPONENT:
                raise _ExprError(f"the exponent {n} (integers up to {_MAX_EXPONENT} only)")
            size = int(n)
        if parens:
            self.take(")")
        return size

    def primary(self) -> None:
        kind, value = self.peek()
        if kind == "num":
            self.take()
            if len(value) > _MAX_INT_DIGITS:
                raise _ExprError(f"the number {value[:12]}... has more than {_MAX_INT_DIGITS} digits")
        elif value == "(":
            self.take()
            self.nested(self.expr)
            while self.at(","):  # a tuple, as str() prints Piecewise's pairs
                self.take()
                self.nested(self.expr)
            self.take(")")
        elif kind == "name":
            self.name()
        else:
            raise _ExprError(f"unexpected {value or 'end'!r}")

    def name(self) -> None:
        value = self.take(kind="name")
        if self.mode == "guard" and value == "L" and self.at("["):
            self.source()
        elif self.mode == "guard" and value == "torch" and self.at("."):
            self.take(".")
            attr = self.take(kind="name")
            if attr not in _TORCH_SYM:
                raise _ExprError(f"torch.{attr}")
            self.call(f"torch.{attr}")
        elif self.mode == "guard" and value == "math" and self.at("."):
            self.take(".")
            attr = self.take(kind="name")
            if attr == "inf":
                return
            if attr not in _MATH:
                raise _ExprError(f"math.{attr}")
            self.call(f"math.{attr}")
        elif self.at("("):
            allowed = _SYMPY_FUNCTIONS | _POWERS | (_GUARD_FUNCTIONS if self.mode == "guard" else frozenset())
            if value not in allowed:
                raise _ExprError(f"the call {value}(...)")
            self.call(value)
        elif value in _CONSTANTS or (self.mode == "guard" and value == "inf"):
            return
        elif self.mode != "guard" and _SYMBOL.fullmatch(value):
            self.symbol(value)
        else:
            raise _ExprError(f"the name {value!r}")

    def symbol(self, value: str) -> None:
        if self.mode == "declare":
            self.found.add(value)
        elif value not in self.symbols:
            raise _ExprError(f"the symbol {value!r}, which range_constraints does not declare")

    def call(self, function: str) -> None:
        self.take("(")
        if function == "Symbol":
            kind, value = self.peek()
            if kind != "str" or not _SYMBOL.fullmatch(value[1:-1]):
                raise _ExprError(f"Symbol({value[:20]}...) that does not name a shape symbol")
            self.take()
            self.symbol(value[1:-1])
            self.keywords()
        elif function in ("Integer", "Rational", "Float"):
            self.literals(function)
        elif function in _POWERS:
            self.inner_powers.append(1)
            self.nested(self.expr)
            self.take(",")
            self.raised(self.inner_powers.pop(), self.small_exponent())
        else:
            first = True
            while not self.at(")"):
                if not first:
                    self.take(",")
                first = False
                if self.peek()[0] == "name" and self.peek(1)[1] == "=":
                    self.keyword()
                else:
                    self.nested(self.expr)
        self.take(")")

    def literals(self, function: str) -> None:
        """``Integer(n)``, ``Rational(p, q)``, ``Float('x', precision=n)`` / ``Float(x)``."""
        for i in range(2 if function == "Rational" else 1):
            if i:
                self.take(",")
            if self.at("-"):
                self.take()
            kind, value = self.peek()
            if function == "Float" and kind == "str":
                value = value[1:-1]
                if not re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d{1,3})?", value):
                    raise _ExprError(f"Float({value[:20]!r})")
                self.take()
            else:
                self.take(kind="num")
                if function != "Float" and not value.isdigit():
                    raise _ExprError(f"{function}({value[:20]})")
            if len(value) > _MAX_INT_DIGITS + 8:
                raise _ExprError(f"the number {value[:12]}... is too long")
        self.keywords()

    def keywords(self) -> None:
        """Trailing ``, name=True`` / ``, precision=53`` arguments."""
        while self.at(","):
            self.take(",")
            self.keyword()

    def keyword(self) -> None:
        """``name=True`` or ``precision=53``: the only keywords a printed expression holds."""
        key = self.take(kind="name")
        if key not in _KEYWORDS:
            raise _ExprError(f"the keyword {key}=")
        self.take("=")
        kind, value = self.peek()
        if not (kind == "num" and value.isdigit() and len(value) < 6) and value not in ("True", "False"):
            raise _ExprError(f"{key}={value[:20]}")
        self.take()

    def source(self) -> None:
        """``L['x'][0].size()[1]``: an input or its size, stride or offset (guards only)."""
        while self.at("["):
            self.take("[")
            kind, value = self.peek()
            if kind == "str" and IDENT.fullmatch(value[1:-1]):
                self.take()
            elif kind == "num" and value.isdigit():
                self.take()
            else:
                raise _ExprError(f"L[{value[:20]}]")
            self.take("]")
        if self.at("."):
            self.take(".")
            method = self.take(kind="name")
            if method not in ("size", "stride", "storage_offset", "dim", "numel"):
                raise _ExprError(f"the method .{method}()")
            self.take("(")
            self.take(")")
            if self.at("["):
                self.take("[")
                if not self.take(kind="num").isdigit():
                    raise _ExprError("a size index that is not an integer")
                self.take("]")


def check_expression(text: object, *, symbols: frozenset[str] = frozenset(), mode: str = "sympy") -> frozenset[str]:
    """Check that ``text`` is shape arithmetic that ``sympy.sympify`` (or ``exec``) may evaluate safely.

    Accepted: integers, the symbols given (``s0``, ``s77``, ``u3``: bare or as
    ``Symbol('s77', positive=True, integer=True)``), ``+ - * / // % **`` (a power only of a
    small integer, and never of a power), comparisons, parentheses, and the functions
    ``torch.export`` prints (``Mul``, ``Add``, ``Max``, ``Min``, ``FloorDiv``, ``Mod``,
    ``CeilToInt``, ``Eq``, ``StrictLessThan``, ...). Nothing else: no other names, no
    attribute access, no strings but symbol names.

    Args:
        text: The expression (anything else is refused).
        symbols: The declared symbols (``mode="sympy"``).
        mode: ``"sympy"`` (an ``expr_str``), ``"declare"`` (a ``range_constraints`` key, whose
            symbols become declared) or ``"guard"`` (a ``guards_code`` line: sizes of the inputs
            as ``L['x'].size()[0]``, ``and``/``or``/``not``, ``math.floor``...).

    Returns:
        The symbols ``text`` declares (``mode="declare"``), else an empty set.

    Raises:
        ValueError: Not such an expression (why, in a few words).

    Example:
        >>> check_expression("Mul(Integer(16), Symbol('s77', positive=True, integer=True))", symbols=frozenset({"s77"}))
        frozenset()
        >>> check_expression("2*s65", mode="declare")
        frozenset({'s65'})
        >>> check_expression("__import__('os').system('ls')")
        Traceback (most recent call last):
        ...
        ValueError: the call __import__(...)
    """
    if mode not in ("sympy", "declare", "guard"):
        raise ValueError(f"mode must be sympy, declare or guard, got {mode!r}")
    if not isinstance(text, str):
        raise ValueError(f"a {type(text).__name__}, not a string")
    try:
        parser = _Expression(text, mode, symbols)
        if not parser.tokens:
            raise _ExprError("empty")
        parser.check()
    except _ExprError as e:
        raise ValueError(str(e)) from None
    return frozenset(parser.found)
