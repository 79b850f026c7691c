"""Expanding a spec's ``layout`` into the concrete list of layers, and describing a list compactly.

A layout takes one of three forms; each expands to a list of block symbols, one per layer:

1. An explicit list of symbols and repeat groups::

       layout: [M, M, {repeat: 3, layers: [A, {repeat: 2, layers: [M]}]}, F]

2. A compact pattern string, e.g. ``"(M*7 A)*6"`` or ``"((M F)*4 (A F) (M F)*3)*3"``. Grammar
   (whitespace between tokens is optional; columns in error messages count from 1)::

       pattern := item+
       item    := atom ( "*" COUNT )?          COUNT: a decimal integer >= 1
       atom    := RUN | "(" item+ ")"
       RUN     := [A-Za-z_][A-Za-z0-9_]*

   A RUN that is a defined block symbol is that symbol. Otherwise, when every character of the run is a
   defined one-character symbol, the run is split into them (``"MMA"`` = ``"M M A"``). A split run cannot
   carry a repeat count (``"MA*3"`` is ambiguous: write ``"M A*3"`` or ``"(M A)*3"``).

3. A ratio layout: ``{n_layers, base, ratios, placement}``. Each symbol in ``ratios`` gets
   ``round(share * n_layers)`` layers (halves round up; at least one for a positive share); ``base``
   fills the rest. ``placement``:

   - ``even``: kinds are placed one at a time, the most numerous first; the k-th of c layers of a kind
     goes to the free slot nearest to the centre of the k-th of c equal parts of the stack,
     ``(k + 1/2) * n_layers / c - 1/2``, avoiding a slot next to the same kind when another is free
     (ties go to the later slot). With ``F: 0.5`` the MLPs land on every second layer after a mixer, and
     one attention in 8 layers lands at index 4, as in Jamba.
   - ``start`` / ``end``: the inserted kinds grouped at the start / end, in the order of ``ratios``.

``describe_layout`` gives the shortest run-length form of a layer list in the pattern grammar
(``"(M*7 A)*6"``), which parses back to the same list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache

from archspec.errors import FieldError, did_you_mean
from archspec.spec import ModelSpec, RatioLayout, RepeatGroup

__all__ = ["MAX_LAYERS", "describe_layout", "expand", "expand_layout", "parse_pattern", "place_ratios"]

MAX_LAYERS = 10_000
"""Layouts expanding to more layers than this are rejected (a typo such as ``M*24000`` would hang)."""

Path = tuple[str | int, ...]


def expand_layout(spec: ModelSpec) -> list[str]:
    """The block symbol of each layer of ``spec``, bottom (next to the embedding) to top."""
    return expand(spec.layout, spec.blocks)


def expand(layout: str | list | RatioLayout, symbols: Collection[str]) -> list[str]:
    """Expand any layout form against the defined block ``symbols``.

    Raises ``FieldError`` whose ``path`` starts with ``"layout"`` (e.g. ``("layout", 2, "layers", 0)``).
    """
    if isinstance(layout, str):
        layers = parse_pattern(layout, symbols)
    elif isinstance(layout, RatioLayout):
        layers = place_ratios(layout, symbols)
    elif isinstance(layout, list):
        layers = _expand_list(layout, symbols, ("layout",))
    else:
        kind = type(layout).__name__
        raise FieldError(("layout",), f"must be a pattern string, a list or a ratio mapping, got {kind}")
    if not layers:
        raise FieldError(("layout",), "expands to no layers")
    return layers


def _unknown(symbol: str, symbols: Collection[str], path: Path, where: str = "") -> FieldError:
    hint = did_you_mean(symbol, symbols) or f"defined symbols: {', '.join(sorted(symbols))}"
    return FieldError(path, f"unknown block symbol {symbol!r}{where}", hint)


def _too_long(path: Path) -> FieldError:
    return FieldError(path, f"expands to more than {MAX_LAYERS} layers")


def _expand_list(items: Sequence[str | RepeatGroup], symbols: Collection[str], path: Path) -> list[str]:
    layers: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, RepeatGroup):
            inner = _expand_list(item.layers, symbols, (*path, i, "layers"))
            layers.extend(inner * item.repeat)
        elif item in symbols:
            layers.append(item)
        else:
            raise _unknown(item, symbols, (*path, i))
        if len(layers) > MAX_LAYERS:
            raise _too_long(path)
    return layers


def parse_pattern(pattern: str, symbols: Collection[str]) -> list[str]:
    """Expand a compact pattern string (grammar in the module docstring) into a list of symbols."""
    return _PatternParser(pattern, symbols).parse()


class _PatternParser:
    """Recursive-descent parser for the pattern grammar; errors name the 1-based column."""

    def __init__(self, text: str, symbols: Collection[str]) -> None:
        self.text = text
        self.symbols = symbols
        self.pos = 0

    def error(self, message: str, hint: str | None = None) -> FieldError:
        return FieldError(("layout",), message, hint)

    def parse(self) -> list[str]:
        self.skip_space()
        if self.pos == len(self.text):
            raise self.error("empty pattern")
        layers = self.items(closing=None)
        if self.pos < len(self.text):
            raise self.error(f"unmatched ')' at column {self.pos + 1}")
        return layers

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def items(self, closing: int | None) -> list[str]:
        """Items up to a ')' (left unconsumed) or the end; ``closing`` is the column of the open '('."""
        layers: list[str] = []
        while True:
            self.skip_space()
            if self.pos == len(self.text):
                if closing is not None:
                    raise self.error(f"'(' at column {closing} is never closed")
                return layers
            if self.text[self.pos] == ")":
                return layers
            layers.extend(self.item())
            if len(layers) > MAX_LAYERS:
                raise self.error(f"expands to more than {MAX_LAYERS} layers")

    def item(self) -> list[str]:
        start = self.pos
        char = self.text[start]
        if char == "(":
            self.pos += 1
            inner = self.items(closing=start + 1)
            self.pos += 1  # the ')'
            if not inner:
                raise self.error(f"empty group '()' at column {start + 1}")
            atom, repeatable = inner, True
        elif char.isalpha() or char == "_":
            atom, repeatable = self.run()
        elif char == "*":
            raise self.error(f"'*' at column {start + 1} has nothing to repeat")
        elif char.isdigit():
            raise self.error(f"unexpected number at column {start + 1}", "write a repeat as SYMBOL*N or (...)*N")
        else:
            raise self.error(f"unexpected character {char!r} at column {start + 1}")
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] == "*":
            star = self.pos + 1
            if not repeatable:
                run = self.text[start:self.pos].strip()
                raise self.error(
                    f"repeat after the run {run!r} at column {star} is ambiguous",
                    f"write {' '.join(run[:-1])} {run[-1]}*N or ({' '.join(run)})*N",
                )
            return atom * self.count(star)
        return atom

    def run(self) -> tuple[list[str], bool]:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] == "_"):
            self.pos += 1
        run = self.text[start:self.pos]
        if run in self.symbols:
            return [run], True
        if len(run) > 1 and all(c in self.symbols for c in run):
            return list(run), False
        raise _unknown(run, self.symbols, ("layout",), f" at column {start + 1}")

    def count(self, star: int) -> int:
        self.pos += 1
        self.skip_space()
        begin = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        if begin == self.pos:
            raise self.error(f"expected a repeat count after '*' at column {star}")
        value = int(self.text[begin:self.pos])
        if value < 1:
            raise self.error(f"repeat count at column {begin + 1} must be at least 1, got {value}")
        if value > MAX_LAYERS:
            raise self.error(f"expands to more than {MAX_LAYERS} layers")
        return value


def ratio_counts(layout: RatioLayout) -> dict[str, int]:
    """Layers per inserted symbol: ``round(share * n_layers)`` (halves up), at least 1 for a positive share."""
    counts = {}
    for symbol, share in layout.ratios.items():
        count = int(share * layout.n_layers + 0.5)
        counts[symbol] = max(count, 1) if share > 0 else 0
    return counts


def place_ratios(layout: RatioLayout, symbols: Collection[str]) -> list[str]:
    """Expand a ratio layout (rules in the module docstring)."""
    if layout.base not in symbols:
        raise _unknown(layout.base, symbols, ("layout", "base"))
    for symbol in layout.ratios:
        if symbol not in symbols:
            raise _unknown(symbol, symbols, ("layout", "ratios", symbol))
        if symbol == layout.base:
            raise FieldError(("layout", "ratios", symbol), f"the base symbol {symbol!r} cannot also have a share")
    n = layout.n_layers
    if n > MAX_LAYERS:
        raise _too_long(("layout", "n_layers"))
    counts = ratio_counts(layout)
    total = sum(counts.values())
    if total > n:
        shown = ", ".join(f"{s}: {c}" for s, c in counts.items())
        raise FieldError(
            ("layout", "ratios"),
            f"the shares round to {total} layers ({shown}), more than n_layers = {n}",
        )
    inserted = [s for s, c in counts.items() for _ in range(c)]
    if layout.placement == "start":
        return inserted + [layout.base] * (n - total)
    if layout.placement == "end":
        return [layout.base] * (n - total) + inserted
    return _place_even(n, layout.base, counts)


def _place_even(n: int, base: str, counts: dict[str, int]) -> list[str]:
    slots: list[str | None] = [None] * n
    for symbol in sorted(counts, key=lambda s: -counts[s]):  # stable: ties keep the order of `ratios`
        c = counts[symbol]
        for k in range(c):
            # distance to the ideal (k + 1/2) * n / c - 1/2, scaled by 2c to stay in integers
            target = (2 * k + 1) * n - c

            def key(i: int, symbol: str = symbol, target: int = target, c: int = c) -> tuple[bool, int, int]:
                touches = (i > 0 and slots[i - 1] == symbol) or (i + 1 < n and slots[i + 1] == symbol)
                return touches, abs(2 * c * i - target), -i

            best = min((i for i in range(n) if slots[i] is None), key=key)
            slots[best] = symbol
    return [s if s is not None else base for s in slots]


def describe_layout(symbols: Sequence[str]) -> str:
    """The shortest pattern string (module grammar) that expands to ``symbols``, e.g. ``"(M*7 A)*6"``.

    Symbols are separated by spaces, so the result parses back to ``symbols`` given the same block set.
    Exact search over all splits and repetitions: cubic in the number of layers (under a second at 200).
    """
    seq = tuple(symbols)
    if not seq:
        return ""
    return _shortest(seq)


@lru_cache(maxsize=64)
def _shortest(seq: tuple[str, ...]) -> str:
    # Interval DP on text lengths: cost[i][j] is the length of the shortest text for seq[i:j]; how[i][j]
    # records the choice (0: one symbol, > 0: split at that index, < 0: repetition with period -how).
    n = len(seq)
    periods = [_smallest_periods(seq[i:]) for i in range(n)]
    cost = [[0] * (n + 1) for _ in range(n + 1)]
    how = [[0] * (n + 1) for _ in range(n + 1)]
    for i in range(n):
        cost[i][i + 1] = len(seq[i])
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length
            row = cost[i]
            k = min(range(i + 1, j), key=lambda k: row[k] + cost[k][j])
            best, choice = row[k] + 1 + cost[k][j], k
            smallest = periods[i][length - 1]
            if length % smallest == 0:
                for period in range(smallest, length // 2 + 1, smallest):
                    if length % period == 0:
                        text = row[i + period] + 1 + len(str(length // period)) + (2 if period > 1 else 0)
                        if text <= best:
                            best, choice = text, -period
            cost[i][j], how[i][j] = best, choice
    return _spell(seq, how, 0, n)


def _spell(seq: tuple[str, ...], how: list[list[int]], i: int, j: int) -> str:
    choice = how[i][j]
    if j - i == 1:
        return seq[i]
    if choice > 0:
        return _spell(seq, how, i, choice) + " " + _spell(seq, how, choice, j)
    period = -choice
    inner = _spell(seq, how, i, i + period)
    return f"{inner}*{(j - i) // period}" if period == 1 else f"({inner})*{(j - i) // period}"


def _smallest_periods(seq: tuple[str, ...]) -> list[int]:
    """periods[m - 1]: the smallest period of seq[:m] (Knuth-Morris-Pratt prefix function)."""
    prefix = [0] * len(seq)
    for m in range(1, len(seq)):
        k = prefix[m - 1]
        while k and seq[m] != seq[k]:
            k = prefix[k - 1]
        prefix[m] = k + 1 if seq[m] == seq[k] else 0
    return [m + 1 - prefix[m] for m in range(len(seq))]
