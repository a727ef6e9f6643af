import pytest

from fmlab.tasks import TASKS, generate_task
from fmlab.tasks.builtin import CLASSIFY_LABELS


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_is_deterministic_with_disjoint_splits(name):
    a = generate_task(name, n_train=300, n_val=50, n_test=50, seed=3)
    b = generate_task(name, n_train=300, n_val=50, n_test=50, seed=3)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == {"train": 300, "validation": 50, "test": 50}
    prompts = {s: {r["prompt"] for r in recs} for s, recs in a.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    assert generate_task(name, n_train=300, n_val=50, n_test=50, seed=4) != a
    # growing the training set keeps the held-out examples held out (hash split)
    bigger = generate_task(name, n_train=600, n_val=50, n_test=50, seed=3)
    assert not {r["prompt"] for r in bigger["train"]} & prompts["test"]


def _undigits(text: str) -> int:
    return int(text.replace(" ", ""))


def test_answers_are_exact():
    data = generate_task("arithmetic", n_train=100, n_val=10, n_test=10, digits=3, op="*")
    for r in data["train"]:
        lhs = r["prompt"].removeprefix("Compute: ").removesuffix(" =")
        a, b = lhs.split(" * ")
        assert _undigits(r["response"]) == _undigits(a) * _undigits(b)
    for r in generate_task("reverse", n_train=50, n_val=5, n_test=5)["train"]:
        words = r["prompt"].removeprefix("Reverse: ").removesuffix(" ->").split()
        assert r["response"].split() == words[::-1]
    for r in generate_task("sort", n_train=50, n_val=5, n_test=5)["train"]:
        words = r["prompt"].removeprefix("Sort: ").removesuffix(" ->").split()
        assert r["response"].split() == sorted(words)
    for r in generate_task("logic", n_train=200, n_val=5, n_test=5)["train"]:
        expr = r["prompt"].removeprefix("Evaluate: ").removesuffix(" =")
        assert str(eval(expr.replace("true", "True").replace("false", "False"))).lower() == (
            r["response"].strip()
        )
    for r in generate_task("classify", n_train=50, n_val=5, n_test=5)["train"]:
        assert r["response"].strip() == "ABCD"[r["label"]]
        assert r["label_name"] == CLASSIFY_LABELS[r["label"]]
        assert r["input"] in r["prompt"]


def test_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        generate_task("nope", n_train=1, n_val=1, n_test=1)
    with pytest.raises(ValueError, match="unique examples"):
        generate_task("logic", n_train=1000, n_val=10, n_test=10, terms=2, max_draws=20000)
