"""Math answers: extraction, normalisation and verification of a model's final number.

Use:
    extract_answer("... #### 72")            -> "72"      (canonical number string, or None)
    verify(response, "72")                    -> True / False
    compute_score(data_source, response, gt)  -> 1.0 / 0.0 (verl signature, see envs.rewards)

Numbers compare exactly as Fractions: "72" == "72.0" == "72.00" and "3.5" == "7/2" (a plain
fraction a/b counts as a number everywhere; its canonical form is the decimal when it terminates).

Which number is the answer: the last "#### n", else the last \\boxed{...} holding a number, else the
last number in the text. The first of these that is present decides: when it is number-shaped but
not a number (a zero denominator "42/0", or more than MAX_NUMBER_CHARS characters) the response has
no answer (None); the extractor never falls back to an earlier number or keeps a numerator.

Bounded work on model text: every function here runs in time linear in the text length (one
regex pass per marker, one pass to match braces, number tokens capped at MAX_NUMBER_CHARS and
boxed contents at MAX_BOXED_CHARS before they are sliced or parsed), and raises nothing on any str.

Beside a LaTeX verifier: this module grades plain numbers only (GSM8K-style). A LaTeX-aware
verifier (e.g. HF `math-verify` for MATH-style answers) can sit beside it as another reward
function with the same verl signature, reusing `boxed_spans` / `boxed_contents` to locate
the boxed answer.
"""
from __future__ import annotations

import re
from fractions import Fraction

MAX_NUMBER_CHARS = 100   # a longer number-shaped token is not an answer (bounds the arithmetic)
MAX_BOXED_CHARS = 400    # a longer \boxed{...} content is not a number answer (skipped)

# A number not glued to a preceding word or dot ("x2" and "5-2" give no -2; "H2O" gives none):
# optional minus, digits with optional thousands separators, optional decimals, optional "/den".
# Linear: every alternative is anchored at a token start that the look-behind admits once.
_NUM = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
# "(?:\$\s*)?" rather than "\$?\s*": two adjacent \s* would split a run of n spaces n ways.
_HASH_RE = re.compile(r"####\s*(?:\$\s*)?(" + _NUM + ")")
_FRAC_RE = re.compile(r"\\d?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_INVALID = object()  # a candidate that is number-shaped but not a number


def parse_number(s: str) -> Fraction | None:
    """A (possibly comma/$-decorated) number or a/b as a Fraction; None when it is not one
    (including a zero denominator and anything over MAX_NUMBER_CHARS). Never raises on a str."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(s)  # accepts ints, decimals and "a/b"; raises on "a/0"
    except (ValueError, ZeroDivisionError):
        return None


def canonical_number(value: str | Fraction) -> str:
    """Canonical string: integers without decimals, terminating decimals without trailing zeros,
    other fractions as "p/q". ValueError when `value` is not a number (see parse_number)."""
    f = value if isinstance(value, Fraction) else parse_number(value)
    if f is None:
        raise ValueError(f"not a number: {value!r}")
    if f.denominator == 1:
        return str(f.numerator)
    d = f.denominator
    twos = (d & -d).bit_length() - 1  # d = 2^twos * 5^fives * rest
    d >>= twos
    fives = 0
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        return f"{f.numerator}/{f.denominator}"
    digits = max(twos, fives)  # the decimal terminates after exactly this many digits
    sign = "-" if f < 0 else ""
    scaled = abs(f.numerator) * 10**digits // f.denominator
    whole, frac = divmod(scaled, 10**digits)
    return f"{sign}{whole}.{str(frac).zfill(digits).rstrip('0')}"


def _number(token: str):
    """Canonical string of a number token, or _INVALID when it is number-shaped but not a number."""
    f = parse_number(token)
    return _INVALID if f is None else canonical_number(f)


def _last_number(text: str):
    last = None
    for last in _NUM_RE.finditer(text):
        pass
    return None if last is None else _number(last.group())


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every \\boxed{...} content (text[start:end]), braces matched (so
    \\boxed{\\frac{7}{2}} works), in order of the openers; an opener whose brace never closes gives
    nothing. Linear: one pass over the braces with a stack. Never raises on a str."""
    openers = [mt.end() - 1 for mt in _BOXED_RE.finditer(text)]
    if not openers:
        return []
    close: dict[int, int] = {}
    stack: list[int] = []
    for mt in _BRACE_RE.finditer(text, openers[0]):
        if mt.group() == "{":
            stack.append(mt.start())
        elif stack:
            close[stack.pop()] = mt.start()
    return [(i + 1, close[i]) for i in openers if i in close]


def boxed_contents(text: str, max_chars: int | None = MAX_BOXED_CHARS) -> list[str]:
    """Contents of every \\boxed{...} (see boxed_spans), skipping contents over `max_chars`
    (None: keep all; nested boxes repeat their text, so the total can be quadratic)."""
    return [text[a:b] for a, b in boxed_spans(text) if max_chars is None or b - a <= max_chars]


def _boxed_number(content: str):
    """The number of one boxed content: None (no number), _INVALID or a canonical string."""
    content = content.replace("{,}", ",").replace("\\!", "").replace("\\$", "$")
    fr = None
    for fr in _FRAC_RE.finditer(content):
        pass
    if fr is not None:
        return _number(f"{fr.group(1)}/{fr.group(2)}")
    return _last_number(content)


def _boxed_candidate(text: str):
    """The number of the last \\boxed{} that holds one (contents over MAX_BOXED_CHARS skipped
    before they are sliced, so nested boxes stay linear)."""
    for a, b in reversed(boxed_spans(text)):
        if b - a <= MAX_BOXED_CHARS:
            value = _boxed_number(text[a:b])
            if value is not None:
                return value
    return None


def _candidates(text: str) -> tuple:
    """(last '#### n', last \\boxed{n}, last number): each a canonical string, None (absent) or
    _INVALID (number-shaped, not a number)."""
    hashed = None
    for hashed in _HASH_RE.finditer(text):
        pass
    hashed = None if hashed is None else _number(hashed.group(1))
    return hashed, _boxed_candidate(text), _last_number(text)


def extract_answer(text: str) -> str | None:
    """The model's final answer as a canonical number string: the last '#### n', else the last
    \\boxed{n}, else the last number in the text. None when there is no number, when the deciding
    candidate is not a number ("#### 42/0", an over-long digit run), or for a non-str. Never raises."""
    if not isinstance(text, str):
        return None
    for c in _candidates(text):
        if c is not None:
            return None if c is _INVALID else c
    return None


def verify(response: str, ground_truth: str, strict: bool = True) -> bool:
    """Exact numeric equality (as Fractions) of the response's answer with the ground truth.

    strict=True compares only `extract_answer(response)` (#### > boxed > last number).
    strict=False accepts a match of any of the three candidates (useful to evaluate a model that
    writes a wrong '####' line but the right last number). Model output is only parsed, never run.
    Returns False for a non-str response; raises ValueError only when ground_truth is not a number.
    """
    truth = parse_number(str(ground_truth))
    if truth is None:
        raise ValueError(f"ground_truth is not a number: {ground_truth!r}")
    if not isinstance(response, str):
        return False
    cands = [extract_answer(response)] if strict else list(_candidates(response))
    return any(isinstance(c, str) and parse_number(c) == truth for c in cands)


def compute_score(data_source: str, solution_str: str, ground_truth: str,
                  extra_info: dict | None = None) -> float:
    """The default reward (verl signature, see envs.rewards): 1.0 if verified else 0.0.
    Raises ValueError only for a ground truth that is not a number."""
    return 1.0 if verify(solution_str, ground_truth) else 0.0
