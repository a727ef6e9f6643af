"""Domain adaptation end to end: continuing with domain tokens added to the tokenizer (and the
export reloading with the new vocabulary), and the domain_sft preset (LoRA + forgetting monitor).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from tests.conftest import _sentences, run_train, synthetic_overrides
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory, jsonl_corpus) -> dict:
    out = tmp_path_factory.mktemp("base")
    # 192 positions: the domain_sft test's prompts need them (lengths are checked against the
    # base's max_position_embeddings before training)
    data = [o for o in synthetic_overrides(jsonl_corpus) if not o.startswith("data.block_size")]
    return run_train(out, *data, "data.block_size=192", "trainer.max_steps=6", "run_test=false")


@pytest.fixture(scope="module")
def domain_jsonl(tmp_path_factory) -> Path:
    """The synthetic sentences with domain words the base tokenizer has never seen."""
    swap = {"model": "kubernetes", "tokens": "microservices", "reads": "orchestrates"}
    docs = [" ".join(swap.get(w, w) for w in d.split()) for d in _sentences(120, seed=7)]
    path = tmp_path_factory.mktemp("domain") / "domain.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    return path


def _columns(path: str) -> set[str]:
    with open(path) as fh:
        return {k for row in csv.DictReader(fh) for k, v in row.items() if v}


def test_continue_with_added_domain_tokens_and_reload_the_export(base, domain_jsonl, tmp_path):
    base_tok = AutoTokenizer.from_pretrained(base["paths"]["export_dir"])
    s = run_train(
        tmp_path / "ext",
        *synthetic_overrides(domain_jsonl)[:5],
        f"init_from={base['paths']['output_dir']}",
        "extend_tokenizer.tokens=['<k8s>']",
        "extend_tokenizer.mine=3",
        "extend_tokenizer.init=subtokens",
        "trainer.max_steps=3",
        "run_test=false",
        "export.which=last",
    )
    run = Path(s["paths"]["output_dir"])
    card = json.loads((run / "export" / "fmlab_card.json").read_text())
    ext = card["tokenizer_extension"]
    assert ext["base_vocab"] == len(base_tok) and ext["vocab"] == len(base_tok) + 4
    assert ext["added_tokens"][0] == "<k8s>"
    mined = ext["added_tokens"][1:]
    assert " kubernetes" in mined  # the most frequent unseen domain word
    assert all(len(base_tok(w, add_special_tokens=False)["input_ids"]) >= 3 for w in mined)
    for where in (run / "tokenizer", run / "export"):  # the run's and the export's tokenizer
        tok = AutoTokenizer.from_pretrained(str(where))
        assert len(tok) == ext["vocab"]
        k8s = tok.convert_tokens_to_ids(" kubernetes")
        assert k8s >= len(base_tok) and tok(" kubernetes", add_special_tokens=False)[
            "input_ids"
        ] == [k8s]
    model = AutoModelForCausalLM.from_pretrained(str(run / "export"))
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.config.vocab_size
    ids = tok("the kubernetes cluster", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(tok)
    assert math.isfinite(s["val/loss"]) and s["data"]["vocab_size"] == len(tok)


def test_domain_sft_preset_trains_lora_and_measures_forgetting(base, jsonl_corpus, tmp_path):
    sets = "callbacks.forgetting.sets.general"
    s = run_train(
        tmp_path / "sft",
        "experiment=domain_sft",
        f"init_from={base['paths']['export_dir']}",
        "data.n_train=64",
        "data.n_val=16",
        "data.n_test=16",
        "data.batch_size=8",
        "data.max_length=192",  # the base's 300-token vocabulary spells the prompts out
        "data.exact_match_examples=8",
        f"{sets}.sources=[{{path: '{jsonl_corpus}', text_field: body}}]",
        f"{sets}.block_size=64",
        f"{sets}.val_fraction=0.1",
        f"{sets}.test_fraction=0.1",
        f"{sets}.filter=null",
        "callbacks.forgetting.max_batches=2",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "run_test=false",
        "export.hf=false",
    )
    assert s["method"] == "lora" and s["params_trainable_pct"] < 50
    logged = _columns(s["paths"]["metrics_csv"])
    assert {"forget/general/ppl_ratio", "forget/general/kl_to_base", "forget/domain/gain"} <= logged
    report = json.loads((Path(s["paths"]["output_dir"]) / "forgetting" / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [0, 2, 4]
    assert report["final"]["forget/general/ppl_ratio"] > 0
