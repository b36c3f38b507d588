"""Math answer extraction and checking, GSM8K- and MATH-style.

GSM8K: the answer follows ``####``, else "The answer is", else it is the last number.
MATH: the last ``\\boxed{...}`` (nested braces allowed). Both are compared by
``math-verify`` (sympy equivalence: fractions vs decimals, ``\\dfrac``, percent, ...)
when both sides parse, and by normalised strings otherwise.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["extract_boxed", "extract_gsm8k_answer", "gsm8k_gold", "is_correct", "normalize_math", "normalize_number"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\\?\(?\s*([^\n]*)", re.IGNORECASE)


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


def gsm8k_gold(answer: str) -> str | None:
    """Gold answer of a GSM8K record's ``answer`` field (ends in ``#### N``)."""
    return extract_gsm8k_answer(answer)


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


_STRIP = [
    (re.compile(r"\\text\{\s*([^{}]*)\}"), r"\1"),
    (re.compile(r"\\(?:mathrm|textbf|mathbf)\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\$"), ""),
    (re.compile(r"\^\{?\\circ\}?|°|\\degree"), ""),
    (re.compile(r"\\%|%"), ""),
    (re.compile(r"\s+"), ""),
]
_UNITS = re.compile(r"(?:cm|m|km|inches|inch|feet|ft|units|dollars|degrees|cents)$")


def normalize_math(answer: str) -> str:
    """String normalisation of a MATH answer, for when sympy cannot decide."""
    text = answer.strip()
    for pattern, replacement in _STRIP:
        text = pattern.sub(replacement, text)
    text = _UNITS.sub("", text).rstrip(".")
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)  # \frac12 -> \frac{1}{2}
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text


def is_correct(prediction: str | None, gold: str | None, *, style: str = "gsm8k") -> bool:
    """Whether an extracted answer matches the gold one.

    Args:
        prediction: the extracted answer (None: the model gave none).
        gold: the reference answer.
        style: ``gsm8k`` (numbers) or ``math`` (LaTeX expressions).
    """
    if prediction is None or gold is None:
        return False
    if style == "gsm8k":
        a, b = normalize_number(prediction), normalize_number(gold)
        if a is not None and b is not None:
            return Fraction(a) == Fraction(b)
    if normalize_math(prediction) == normalize_math(gold):
        return True
    try:
        from math_verify import parse, verify

        gold_parsed = parse(f"${gold}$")
        prediction_parsed = parse(f"${prediction}$")
        return bool(gold_parsed and prediction_parsed and verify(gold_parsed, prediction_parsed))
    except Exception:  # math-verify raises on inputs it cannot parse or times out on
        return False
