import re

import pytest

from gmt_ray.data.arithmetic import generate_arithmetic, preference_pairs


def test_deterministic_disjoint_and_well_formed():
    a = generate_arithmetic(300, 50, 50, seed=3, max_ops=3)
    b = generate_arithmetic(300, 50, 50, seed=3, max_ops=3)
    assert a == b
    assert a != generate_arithmetic(300, 50, 50, seed=4, max_ops=3)
    prompts = [{r["prompt"] for r in a[s]} for s in ("train", "validation", "test")]
    assert sum(map(len, prompts)) == 400 and len(set.union(*prompts)) == 400
    for record in a["train"]:
        work, answer = record["response"].rsplit("\n#### ", 1)
        assert answer == record["answer"]
        # every step's arithmetic is right, and the last result is the answer
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", work)
        assert 1 <= len(steps) <= 3
        for x, op, y, z in steps:
            assert eval(f"{x} {op} {y}") == int(z)
        assert steps[-1][3] == answer


def test_too_many_problems_for_the_settings_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct problems"):
        generate_arithmetic(1000, 10, 10, max_ops=1, max_number=2, domains=["bare"])


def test_preference_pairs_differ_only_in_the_final_result():
    records = generate_arithmetic(50, 1, 1, seed=1)["train"]
    for record, pair in zip(records, preference_pairs(records, seed=1)):
        assert pair["chosen"] == record["response"]
        wrong = pair["rejected"].rsplit("#### ", 1)[1]
        assert wrong != record["answer"] and int(wrong) >= 0
        assert pair["rejected"].startswith(record["response"].rsplit("= ", 1)[0])


def test_problems_come_from_the_chosen_worlds():
    from gmt_ray.data.arithmetic import DOMAINS

    bus = generate_arithmetic(200, 0, 0, domains=["bus"], seed=5)["train"]
    assert all("passenger" in r["prompt"] or "rider" in r["prompt"] for r in bus)
    assert all(r["response"].split(".")[0].endswith(("riders", "rider")) for r in bus)  # the world's own opener
    mixed = generate_arithmetic(400, 0, 0, domains=["farm", "bare"], seed=5)["train"]
    bare = [r for r in mixed if r["prompt"].startswith(("What is", "Compute", "Calculate", "Work out"))]
    assert 100 < len(bare) < 300  # both kinds, drawn alike
    assert not any(item in r["prompt"] for r in bus for item in DOMAINS["farm"].items)
    with pytest.raises(ValueError, match="unknown arithmetic domain"):
        generate_arithmetic(10, 0, 0, domains=["boat"])
