"""Math answer extraction and checking, GSM8K- and MATH-style.

GSM8K: the answer follows ``####``, else "The answer is", else it is the last number;
compared as exact rational numbers.
MATH: the model's final answer whole, from whichever comes last: a ``\\boxed{...}`` (nested
braces allowed) or the rest of a "The answer is" line (MetaMathQA's ``The answer is: \\frac{1}{2}``,
Minerva's ``The final answer is $\\sqrt{2}$. I hope it is correct.``). Never a number picked out
of it: ``(1,2)`` is a pair, not 12. Whether it equals the gold answer is ``math-verify``'s verdict
alone (its own LaTeX parsing and sympy equivalence: fractions vs decimals, ``\\dfrac``, percent,
degrees, intervals, tuples, expressions, ...).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

__all__ = ["extract_answer_line", "extract_boxed", "extract_gsm8k_answer", "extract_math_answer", "is_correct",
           "math_equivalent", "normalize_number"]

_MATH_VERIFY_TIMEOUT_S = 5  # per parse and per comparison; sympy can stall on odd input

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\\?\(?\s*([^\n]*)", re.IGNORECASE)
# The rest of the line after "The answer is" (with or without a colon): MetaMathQA's and Minerva's form.
_ANSWER_LINE = re.compile(r"answer is[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE)
_MINERVA_CLOSE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.IGNORECASE)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def normalize_number(text: str) -> str | None:
    """'$1,234.50.' -> '1234.5'; '3/4' -> '0.75'; None when there is no number."""
    match = _NUMBER.search(text.replace("−", "-"))
    if match is None:
        return None
    raw = match.group(0).replace(",", "")
    try:
        value = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    return f"{decimal:.10g}"


def extract_gsm8k_answer(completion: str) -> str | None:
    """The model's final answer as a normalised number string, or None."""
    if "####" in completion:
        return normalize_number(completion.split("####")[-1])
    matches = _ANSWER_IS.findall(completion)
    if matches:
        found = normalize_number(matches[-1])
        if found is not None:
            return found
    numbers = _NUMBER.findall(completion.replace("−", "-"))
    return normalize_number(numbers[-1]) if numbers else None


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces respected."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start:].split(None, 1)  # "\boxed 5"
        return rest[1].strip() if len(rest) > 1 else None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index]
    return None


def extract_answer_line(text: str) -> str | None:
    """The whole answer after the last "The answer is" (to the end of its line), without the
    sentence's closing period, Minerva's "I hope it is correct." or math delimiters; a
    ``\\boxed{}`` inside it gives its contents. None when there is no such line or it is empty.

    ``"The answer is: \\frac{1}{2}"`` -> ``"\\frac{1}{2}"``; ``"The answer is: (1,2)"`` -> ``"(1,2)"``.
    """
    matches = [m for m in _ANSWER_LINE.finditer(text) if m.group(1).strip()]
    if not matches:
        return None
    answer = _MINERVA_CLOSE.sub("", matches[-1].group(1)).strip()
    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
    for opening, closing in _DELIMITERS:
        if len(answer) > len(opening) + len(closing) and answer.startswith(opening) and answer.endswith(closing):
            answer = answer[len(opening) : -len(closing)].strip()
            break
    boxed = extract_boxed(answer)
    return (boxed if boxed is not None else answer) or None


def extract_math_answer(text: str) -> str | None:
    """A MATH answer as a whole: the last ``\\boxed{}`` or the last "The answer is" line,
    whichever comes later in ``text`` (None: neither). No number is ever picked out of it."""
    boxed_at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    lines = [m for m in _ANSWER_LINE.finditer(text) if m.group(1).strip()]
    line_at = lines[-1].start() if lines else -1
    if boxed_at < 0 and line_at < 0:
        return None
    return (extract_boxed(text) if boxed_at > line_at else None) or extract_answer_line(text)


def math_equivalent(prediction: str, gold: str) -> bool:
    """Whether two extracted MATH answers are equivalent, as ``math-verify`` decides.

    Both go to math-verify as inline LaTeX; an answer it cannot parse is not correct.
    """
    from math_verify import parse, verify

    # math-verify times out with signal.alarm, which only the main thread may set; in any
    # other thread (Ray Train runs the training function in one) every call would fail
    # and count as wrong, so there it runs without its timeout.
    timeout = _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    predicted = parse(f"${prediction}$", parsing_timeout=timeout)
    return bool(gold_parsed and predicted and verify(gold_parsed, predicted, timeout_seconds=timeout))


def is_correct(prediction: str | None, gold: str | None, *, style: str = "gsm8k") -> bool:
    """Whether an extracted answer matches the gold one.

    Args:
        prediction: the extracted answer (None: the model gave none).
        gold: the reference answer.
        style: ``gsm8k`` (numbers, compared exactly) or ``math`` (``math_equivalent``).
    """
    if prediction is None or gold is None:
        return False
    if style == "math":
        return math_equivalent(prediction, gold)
    a, b = normalize_number(prediction), normalize_number(gold)
    return a is not None and b is not None and Fraction(a) == Fraction(b)
