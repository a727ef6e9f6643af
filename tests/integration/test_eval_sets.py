"""fmlab-eval on several sets at once, and lm-evaluation-harness on fmlab models (full and LoRA)
with a local task definition (offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tests.conftest import _sentences, run_train, synthetic_overrides

from fmlab.config import compose_config
from fmlab.eval import evaluate
from fmlab.evaluation.lm_eval import lm_eval_tasks
from fmlab.methods.adapters import load_trained

pytestmark = pytest.mark.slow

TASK = "fmlab_toy_mc"


@pytest.fixture(scope="module")
def runs(jsonl_corpus, tmp_path_factory) -> dict[str, dict]:
    """A tiny pre-trained model, and a LoRA adapter trained on top of its export."""
    root = tmp_path_factory.mktemp("lm_eval_runs")
    data = synthetic_overrides(jsonl_corpus)
    base = run_train(root / "base", *data, "run_test=false")
    lora = run_train(
        root / "lora",
        *[o for o in data if not o.startswith("tokenizer.")],
        "model=pretrained",
        f"model.name_or_path={base['paths']['export_dir']}",
        "method=lora",
        "run_test=false",
    )
    return {"base": base, "lora": lora}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A multiple-choice task on a local jsonl file: the in-language continuation vs. noise."""
    root = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    rows = []
    for sentence in _sentences(24, seed=7):
        first = sentence.split(".")[0].split()
        context, good = " ".join(first[:-1]), f" {first[-1]}."
        bad = " " + " ".join(rng.choice(["purple", "seven", "under", "happily"]) for _ in range(2))
        label = rng.randint(0, 1)
        rows.append({"context": context, "choices": [good, bad][:: 1 - 2 * label], "label": label})
    (root / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "toy.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'toy.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), encoded as the harness does (pair split, no specials)."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :]
    ids = torch.tensor([(ctx + cont)[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    rows = logp[len(ctx) - 1 :]
    return float(sum(rows[i, t] for i, t in enumerate(cont)))


@pytest.mark.parametrize("which", ["base", "lora"])
def test_lm_eval_scores_a_local_task_on_an_fmlab_model(runs, task_dir, which):
    model, tok = load_trained(runs[which]["paths"]["output_dir"])
    expected = "PeftModelForCausalLM" if which == "lora" else "LlamaForCausalLM"
    assert type(model).__name__ == expected
    metrics, raw = lm_eval_tasks(model, tok, [TASK], include_path=str(task_dir), log_samples=True)
    samples = raw["samples"][TASK]
    assert len(samples) == 24 and metrics[f"lm_eval/{TASK}/n"] == 24
    hits = 0
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        mine = [_loglikelihood(model, tok, s["doc"]["context"], c) for c in s["doc"]["choices"]]
        assert lls == pytest.approx(mine, abs=1e-3)
        hits += int(max(range(len(mine)), key=mine.__getitem__) == s["doc"]["label"])
    assert metrics[f"lm_eval/{TASK}/acc"] == pytest.approx(hits / 24)


def test_lora_adapter_is_active_under_lm_eval_and_fmlab_eval(
    runs, task_dir, jsonl_corpus, tmp_path
):
    scores = {}
    for which in ("base", "lora"):
        model, tok = load_trained(runs[which]["paths"]["output_dir"])
        _, raw = lm_eval_tasks(model, tok, [TASK], include_path=str(task_dir), log_samples=True)
        scores[which] = [float(r[0]) for s in raw["samples"][TASK] for r in s["filtered_resps"]]
    assert max(abs(a - b) for a, b in zip(scores["base"], scores["lora"])) > 1e-3
    # the same through fmlab-eval's config: lm_eval metrics next to loss/perplexity
    cfg = compose_config(
        "eval",
        [
            f"model_path={runs['lora']['paths']['output_dir']}",
            *[o for o in synthetic_overrides(jsonl_corpus) if o.startswith("data")],  # as trained
            f"lm_eval={{tasks: [{TASK}], include_path: '{task_dir}'}}",
        ],
        output_dir=tmp_path,
    )
    summary = evaluate(cfg)
    assert 0.0 <= summary[f"lm_eval/{TASK}/acc"] <= 1.0 and "test/loss" in summary
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk[f"lm_eval/{TASK}/acc"] == summary[f"lm_eval/{TASK}/acc"]


def test_eval_several_sets_at_once(runs, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"body": d}) + "\n" for d in _sentences(60, seed=5)))
    run = runs["base"]
    sources = run["data"]["sources"]
    spec = lambda p: f"[{{path: '{p}', text_field: body}}]"
    both = evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={run['evaluated_checkpoint']}",
                f"sets={{own: {{sources: {spec(sources[0])}}}, other: {{sources: {spec(other)}}}}}",
            ],
            output_dir=tmp_path / "both",
        )
    )
    assert both["val/own/loss"] == pytest.approx(both["val/loss"], rel=1e-6)
    single = evaluate(
        compose_config(
            "eval",
            [
                f"ckpt_path={run['evaluated_checkpoint']}",
                "data_from_run=false",
                *[o for o in synthetic_overrides(other) if o.startswith("data")],
            ],
            output_dir=tmp_path / "single",
        )
    )
    for key in ("val/loss", "test/loss", "val/ppl"):
        split, name = key.split("/")
        assert both[f"{split}/other/{name}"] == pytest.approx(single[key], rel=1e-5)
    assert both["val/other/loss"] != pytest.approx(both["val/own/loss"], rel=1e-3)
