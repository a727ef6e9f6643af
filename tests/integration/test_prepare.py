"""fmlab-prepare through its console script, and training on what it writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import run_train, synthetic_overrides
from tests.unit.data.prep_helpers import random_doc, write_jsonl

from fmlab.config import ConfigError, compose_config
from fmlab.prepare import prepare

pytestmark = pytest.mark.slow


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("fmlab-prepare")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A corpus with a bad row and a near-duplicate, prepared by the console script."""
    tmp = tmp_path_factory.mktemp("prepare_cli")
    rows = [{"body": random_doc(i, 120), "src": "web"} for i in range(220)]
    rows.insert(50, {"body": rows[10]["body"].replace(".", "!"), "src": "web"})  # exact copy
    rows.insert(90, {"src": "web"})  # no text: a bad row on line 91
    write_jsonl(tmp / "raw" / "a.jsonl", rows)
    args = [
        f"sources=[{{path: '{tmp / 'raw'}', text_field: body, domain_field: src}}]",
        f"output_dir={tmp / 'ds'}",
        "segment.block_size=64",
        "tokenizer.vocab_size=300",
        "split.val_fraction=0.1",
        "split.test_fraction=0.1",
        "num_proc=2",
        "print_config=false",
        f"hydra.run.dir={tmp / 'run1'}",
    ]
    proc = _cli(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prepared" in proc.stdout
    again = _cli([*args[:-1], f"hydra.run.dir={tmp / 'run2'}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout
    assert json.loads((tmp / "run2" / "summary.json").read_text())["up_to_date"] is True
    return tmp / "ds"


def test_console_script_writes_dataset_and_card(prepared):
    card = json.loads((prepared / "card.json").read_text())
    st = card["stages"]
    assert st["structure"]["removed"] == {"missing_field": 1}
    assert st["structure"]["examples"]["missing_field"][0]["where"].endswith("a.jsonl:91")
    assert st["dedup"]["removed"]["exact"] == 1
    assert set(card["domains"]) == {"web"}
    assert card["segment"]["block_size"] == 64 and card["tokenizer"]["vocab_size"] <= 300
    for name in (
        "dataset_dict.json",
        "tokenizer/tokenizer.json",
        "card.md",
        "plots/length_tokens.png",
    ):
        assert (prepared / name).is_file(), name


def test_typos_fail_before_any_data_is_read(tmp_path):
    cache = tmp_path / "fresh_cache"
    proc = _cli(
        [
            "sources=[x.jsonl]",
            "output_dir=y",
            "+clean.pi=[email]",
            "dedup.threshold=2",
            "filter.top_ngram_max_share={2: 1.5}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        FMLAB_CACHE_DIR=str(cache),
    )
    assert proc.returncode != 0
    assert "clean.pi: unknown key" in proc.stderr and "did you mean 'pii'" in proc.stderr
    assert "dedup.threshold: Input should be less than or equal to 1" in proc.stderr
    assert "filter.top_ngram_max_share" in proc.stderr
    assert not cache.exists()  # nothing read, nothing cached
    cfg = compose_config("prepare", ["output_dir=y", "prepare/recipe=sft"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="sources: a value is required"):
        prepare(cfg)


def test_train_on_a_prepared_dataset(prepared, tmp_path):
    s = run_train(
        tmp_path,
        "data=prepared",
        f"data.path={prepared}",
        "trainer.max_steps=4",
        "export.hf=false",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    )
    card = json.loads((prepared / "card.json").read_text())
    assert s["data"]["path"] == str(prepared) and s["data"]["block_size"] == 64
    assert s["data"]["vocab_size"] == card["tokenizer"]["vocab_size"]
    assert s["global_step"] == 4 and math.isfinite(s["test/loss"]) and s["test/unigram_ppl"] > 1
    assert s["tokens_seen"] == 4 * 16 * 64


def test_default_data_config_prepares_through_the_pipeline(jsonl_corpus, tmp_path):
    """data=files (like data=embedded) runs the stages; document masks and eval windows train."""
    s = run_train(
        tmp_path,
        *synthetic_overrides(jsonl_corpus),
        "data.document_mask=true",
        "data.eval_stride=48",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "export.hf=false",
    )
    stages = s["data"]["stages"]
    assert {"structure", "clean", "filter", "dedup", "split", "decontaminate"} <= set(stages)
    assert stages["structure"]["in"] == 400
    assert math.isfinite(s["val/loss"]) and math.isfinite(s["test/loss"])
