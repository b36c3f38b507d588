import threading

import pytest

from gmt_ray.eval.benchmarks import get_benchmark
from gmt_ray.eval.benchmarks._base import EvalItem
from gmt_ray.eval.math import (
    extract_answer_line,
    extract_boxed,
    extract_gsm8k_answer,
    extract_math_answer,
    is_correct,
    normalize_number,
)


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("3 + 4 = 7.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.5"),
        ("The answer is: -12", "-12"),
        ("so she has 7 apples, then 9 apples", "9"),
        ("half is 3/4 of it", "0.75"),
        ("no numbers here", None),
        ("#### 18 dollars.", "18"),
    ],
)
def test_gsm8k_extraction(completion, answer):
    assert extract_gsm8k_answer(completion) == answer


def test_gsm8k_comparison_is_numeric():
    assert is_correct("18.0", "18") and is_correct("1,000", "1000") and not is_correct("17", "18")
    assert not is_correct(None, "18")


@pytest.mark.parametrize(
    "text, boxed",
    [
        (r"so \boxed{5}.", "5"),
        (r"\boxed{\frac{1}{\sqrt{2}}} and more", r"\frac{1}{\sqrt{2}}"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\fbox{x+1}", "x+1"),
        ("nothing", None),
        (r"\boxed{unclosed", None),
    ],
)
def test_boxed_extraction(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        (r"\dfrac{1}{2}", "0.5", True),
        (r"\frac12", r"\frac{1}{2}", True),
        ("50\\%", "50", True),
        (r"90^\circ", "90", True),
        (r"\text{(B)}", "(B)", True),
        ("x^2+2x+1", "(x+1)^2", True),
        ("5 cm", "5", True),
        ("2\\%", "0.02", True),
        ("[1,2)", "[1, 2)", True),
        ("3", "4", False),
        ("am", "a", False),  # the old unit-stripping rule read "am" as "a" metres
        ("", "3", False),
        (r"\frac{1}{3}", "0.33", False),
    ],
)
def test_math_equivalence(prediction, gold, correct):
    assert is_correct(prediction, gold, style="math") is correct


def test_normalize_number():
    assert normalize_number("$-1,234.500.") == "-1234.5"


MATH_PAIRS = [(r"\dfrac{1}{2}", "0.5"), ("4m", "4"), ("am", "a"), (r"\left( 1, 2 \right)", "(1,2)"), ("x=3", "3"),
              (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"), (r"\frac{1}{3}", "0.33"), ("5 dollars", "5"), ("12.", "12")]


@pytest.mark.parametrize("prediction, gold", MATH_PAIRS)
def test_math_equivalence_is_math_verifys_verdict(prediction, gold):
    from math_verify import parse, verify

    assert is_correct(prediction, gold, style="math") is verify(parse(f"${gold}$"), parse(f"${prediction}$"))


def test_math_equivalence_works_outside_the_main_thread():
    # math-verify's signal-based timeout cannot be set there (Ray Train runs training in a thread).
    verdicts = []
    worker = threading.Thread(target=lambda: verdicts.extend(
        [is_correct(r"\dfrac{1}{2}", "0.5", style="math"), is_correct("3", "4", style="math")]))
    worker.start()
    worker.join()
    assert verdicts == [True, False]



# MetaMathQA's own answer lines (its responses to MATH-derived questions end this way, unboxed),
# each with the MATH gold it answers. The first-number fallback read the first four as 1, 2, 12, 2.
METAMATH_LINES = [
    ("So the probability is one half.\nThe answer is: \\frac{1}{2}", "\\frac{1}{2}", "\\frac{1}{2}", True),
    ("Taking the square root, we get x = \\sqrt{2}.\nThe answer is: \\sqrt{2}", "\\sqrt{2}", "\\sqrt{2}", True),
    ("The point is (1, 2).\nThe answer is: (1,2)", "(1,2)", "12", False),
    ("Solving the inequality gives the interval.\nThe answer is: [-2,7]", "[-2,7]", "[-2, 7]", True),
    ("Expanding, we get x^2+2x+1.\nThe answer is: x^2+2x+1", "x^2+2x+1", "(x+1)^2", True),
    ("Rationalising the denominator: The answer is: \\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}2", True),
    ("The answer is: (-\\infty,3)", "(-\\infty,3)", "(-\\infty, 3)", True),
    ("The roots are 2 and -1.\nThe answer is: 2,-1", "2,-1", "-1, 2", True),
    ("The answer is: 2\\sqrt{3}", "2\\sqrt{3}", "\\sqrt{12}", True),
    ("The answer is: \\frac{1}{2}", "\\frac{1}{2}", "1", False),
    ("The answer is: \\sqrt{2}", "\\sqrt{2}", "2", False),
]


@pytest.mark.parametrize("completion, answer, gold, correct", METAMATH_LINES)
def test_metamathqa_answer_lines_are_read_whole_and_compared_by_math_verify(completion, answer, gold, correct):
    assert extract_math_answer(completion) == answer
    assert is_correct(answer, gold, style="math") is correct


@pytest.mark.parametrize("line, answer", [
    ("The answer is: $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $\\sqrt{2}$. I hope it is correct.", "\\sqrt{2}"),
    ("the answer is \\(3\\pi\\)", "3\\pi"),
    ("The answer is $\\boxed{5}$", "5"),
    ("The answer is: 0.5", "0.5"),
    ("The answer is:", None),
    ("no answer line", None),
])
def test_answer_line_drops_delimiters_and_closing_words(line, answer):
    assert extract_answer_line(line) == answer


def test_the_later_of_a_boxed_answer_and_an_answer_line_wins():
    assert extract_math_answer("we get \\boxed{3} first.\nThe answer is: 4") == "4"
    assert extract_math_answer("The answer is: 4\nCorrection: \\boxed{3}") == "3"
    assert extract_math_answer("the total is 12 apples") is None


def test_math_benchmark_scores_metamathqa_completions_by_their_whole_answer():
    golds = ["\\frac{1}{2}", "\\sqrt{2}", "12", "(1,2)", "5"]
    items = [EvalItem(str(i), "question", gold) for i, gold in enumerate(golds)]
    completions = ["The answer is: \\frac{1}{2}", "The answer is: \\sqrt{2}", "The answer is: (1,2)",
                   "The answer is: (1,2)", "there are 5 of them"]
    rows = get_benchmark("math").score_samples(
        items, [{"task_id": str(i), "completion": c} for i, c in enumerate(completions)])
    # (1,2) is no 12; and with no boxed answer and no answer line there is nothing to score.
    assert [row["correct"] for row in rows] == [True, True, False, True, False]
    assert rows[4]["extracted"] is None
