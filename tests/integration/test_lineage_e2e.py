"""Reproducible lineage end to end: pinned bases, portable exports, own splits, length checks.

One tiny base (session fixture), a LoRA and a LoReFT fine-tune on it reached through the moving
``latest`` link, then a second toy pre-training that moves ``latest``: the fine-tunes' exports
must keep their base, travel to another directory tree, and refuse a different base.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import _sentences, run_train, synthetic_overrides

from fmlab.config import ConfigError, compose_config
from fmlab.eval import evaluate
from fmlab.generate import generate
from fmlab.methods.adapters import load_trained

pytestmark = pytest.mark.slow

SPLIT_ROWS = {"train": 48, "validation": 12, "test": 12}


def _sft_files(root: Path) -> dict[str, Path]:
    """One prompt/response file per split (first words of a sentence -> the next word)."""
    sentences = [s.split(".")[0].split() for s in _sentences(sum(SPLIT_ROWS.values()), seed=5)]
    rows = [{"prompt": " ".join(w[:2]), "response": " " + w[2]} for w in sentences]
    files, start = {}, 0
    for split, n in SPLIT_ROWS.items():
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows[start : start + n]))
        start += n
    return files


def _sources(files: dict[str, Path]) -> str:
    """The train file undeclared (hash-split into the undeclared splits: none here), the
    held-out files declared."""
    return (
        f"data.sources=['{files['train']}', {{path: '{files['validation']}', split: validation}},"
        f" {{path: '{files['test']}', split: test}}]"
    )


def _finetune(out: Path, base: str, files: dict[str, Path], method: str) -> dict:
    return run_train(
        out,
        "data=sft_files",
        _sources(files),
        "model=pretrained",
        f"model.name_or_path={base}",
        f"method={method}",
        "data.max_length=48",
        "data.batch_size=8",
        "data.exact_match_examples=4",
        "data.max_new_tokens=3",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "callbacks.checkpoint_last.every_n_train_steps=3",
        f"paths.log_dir={out.parent / 'ft_logs'}",
    )


def _generate(model_path: str, out: Path, **extra: str) -> list[dict]:
    overrides = [f"model_path={model_path}", "prompts=['the model','a researcher']"]
    overrides += ["max_new_tokens=4", *(f"{k}={v}" for k, v in extra.items())]
    return generate(compose_config("generate", overrides, output_dir=out))


@pytest.fixture(scope="module")
def runs(tiny_base, small_jsonl, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lineage")
    files = _sft_files(root)
    log_dir = Path(tiny_base["paths"]["output_dir"]).parent / "logs"
    latest = log_dir / "train" / "latest" / "export"  # what the presets used to start from
    assert latest.resolve() == Path(tiny_base["paths"]["export_dir"]).resolve()
    lora = _finetune(root / "lora", str(latest), files, "lora")
    loreft = _finetune(root / "loreft", str(latest), files, "loreft")
    before = {
        "lora": _generate(lora["paths"]["export_adapter"], root / "gen_lora"),
        "loreft": _generate(loreft["paths"]["export_reft"], root / "gen_loreft"),
    }
    # a second toy pre-training moves `latest`: own validation/test files, declared
    text = {s: root / f"{s}.txt" for s in SPLIT_ROWS}
    docs = _sentences(60, seed=9)
    text["train"].write_text("\n\n".join(docs[:40]))
    text["validation"].write_text("\n\n".join(docs[40:50]))
    text["test"].write_text("\n\n".join(docs[50:]))
    second = run_train(
        root / "second",
        *[o for o in synthetic_overrides(small_jsonl) if not o.startswith("data.sources")],
        f"data.sources=['{text['train']}', {{path: '{text['validation']}', split: validation}},"
        f" {{path: '{text['test']}', split: test}}]",
        "data.filter=null",
        "data.dedup=null",
        "seed=7",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.checkpoint_last.every_n_train_steps=2",
        f"paths.log_dir={log_dir}",
    )
    assert latest.resolve() == Path(second["paths"]["export_dir"]).resolve()
    return {
        "root": root,
        "files": files,
        "base": tiny_base,
        "lora": lora,
        "loreft": loreft,
        "second": second,
        "before": before,
    }


def test_exports_keep_their_pinned_base_after_another_pretraining(runs, tmp_path):
    base_dir = str(Path(runs["base"]["paths"]["export_dir"]).resolve())
    for method, key in (("lora", "export_adapter"), ("loreft", "export_reft")):
        s = runs[method]
        pinned = s["lineage"]["model"]
        assert pinned["path"] == base_dir and pinned["given"].endswith("latest/export")
        assert pinned["run_id"] == Path(runs["base"]["paths"]["output_dir"]).name
        config_yaml = Path(s["paths"]["config"]).read_text()
        assert f"name_or_path: {base_dir}" in config_yaml and pinned["fingerprint"] in config_yaml
        lineage = json.loads(Path(s["paths"][key], "fmlab_lineage.json").read_text())
        assert lineage["base"]["fingerprint"] == pinned["fingerprint"]
        assert _generate(s["paths"][key], tmp_path / method) == runs["before"][method]
    fp = runs["lora"]["lineage"]["model"]["fingerprint"]
    adapter = Path(runs["lora"]["paths"]["export_adapter"])
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        == base_dir
    )  # absolute and pinned, never `latest`
    reft = json.loads(Path(runs["loreft"]["paths"]["export_reft"], "reft_config.json").read_text())
    assert reft["base_model_name"] == base_dir and reft["base_model"]["fingerprint"] == fp
    card = json.loads(Path(runs["lora"]["paths"]["export_merged"], "fmlab_card.json").read_text())
    assert card["base"] == base_dir and card["base_fingerprint"] == fp
    # fmlab-eval on the export gives the numbers the run reported
    s = runs["lora"]
    overrides = [f"model_path={s['paths']['export_adapter']}", "data=sft_files"]
    overrides += [_sources(runs["files"]), "data.max_length=48", "data.max_new_tokens=3"]
    overrides += ["data.exact_match_examples=4"]
    ev = evaluate(compose_config("eval", overrides, output_dir=tmp_path / "ev"))
    assert ev["test/loss"] == pytest.approx(s["test/loss"], rel=1e-4)
    assert ev["lineage"]["base"]["fingerprint"] == fp


def test_eval_of_a_run_dir_uses_the_reported_checkpoint(runs, tmp_path):
    s = runs["lora"]
    cfg = compose_config("eval", [f"ckpt_path={s['paths']['output_dir']}"], output_dir=tmp_path)
    ev = evaluate(cfg)
    assert ev["evaluated"] == s["evaluated_checkpoint"]
    assert "evaluated_checkpoint" in ev["checkpoint_choice"]
    assert ev["val/loss"] == pytest.approx(s["val/loss"], rel=1e-4)


def test_own_split_files_give_exactly_their_rows(runs, tiny_base):
    sft = runs["lora"]["data"]
    assert {s: sft[s]["examples"] for s in SPLIT_ROWS} == SPLIT_ROWS
    by_file = {Path(k).name: v for k, v in sft["split_sources"].items()}
    assert by_file["validation.jsonl"] == {
        "declared": "validation",
        "train": 0,
        "validation": 12,
        "test": 0,
    }
    assert by_file["train.jsonl"]["train"] == 48 and by_file["train.jsonl"]["declared"] is None
    text = {Path(k).name: v for k, v in runs["second"]["data"]["split_sources"].items()}
    assert {f: text[f"{f}.txt"][f] for f in SPLIT_ROWS} == {
        "train": 40,
        "validation": 10,
        "test": 10,
    }
    assert text["train.txt"]["validation"] == text["train.txt"]["test"] == 0
    # a multi-task task from files
    from fmlab.data.multitask import MultiTaskDataModule
    from fmlab.data.tokenizer import fixed_tokenizer
    from fmlab.data.tokenizer import pretrained as load_tokenizer

    files = runs["files"]
    task = {
        "kind": "generative",
        "sources": [
            str(files["train"]),
            {"path": str(files["validation"]), "split": "validation"},
            {"path": str(files["test"]), "split": "test"},
        ],
        "exact_match_examples": 0,
    }
    dm = MultiTaskDataModule(tasks={"next": task}, batch_size=4, cache_dir=str(runs["root"]))
    dm.prepare(fixed_tokenizer(load_tokenizer(name_or_path=tiny_base["paths"]["export_dir"])))
    stats = dm.stats["tasks"]["next"]
    assert {s: stats[s]["examples"] for s in SPLIT_ROWS} == SPLIT_ROWS
    assert stats["split_sources"][str(files["test"])]["test"] == 12


def test_moved_adapter_loads_with_override_and_refuses_another_base(runs, tmp_path):
    adapter = Path(runs["lora"]["paths"]["export_adapter"])
    base = Path(runs["base"]["paths"]["export_dir"])
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model, _ = load_trained(adapter)
    expected = model(input_ids=ids).logits
    tree = tmp_path / "elsewhere"
    shutil.copytree(adapter, tree / "adapter")
    shutil.copytree(base, tree / "base")
    gone = base.with_name("export.gone")
    base.rename(gone)  # the original base is gone (restored for the other tests afterwards)
    try:
        with pytest.raises(ConfigError, match="has moved or is gone; pass base_model="):
            load_trained(tree / "adapter")
        info: dict = {}
        moved, _ = load_trained(tree / "adapter", base=str(tree / "base"), lineage=info)
        torch.testing.assert_close(moved(input_ids=ids).logits, expected, rtol=0, atol=0)
        assert info["base"]["path"] == str((tree / "base").resolve())
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        plain = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tree / "base"), tree / "adapter"
        ).eval()
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        other = runs["second"]["paths"]["export_dir"]
        recorded = runs["lora"]["lineage"]["model"]["fingerprint"]
        with pytest.raises(ConfigError, match="allow_base_mismatch") as err:
            load_trained(tree / "adapter", base=other)
        assert recorded in str(err.value) and "fingerprint xxh3:" in str(err.value)
        info = {}
        load_trained(tree / "adapter", base=other, allow_base_mismatch=True, lineage=info)
        assert recorded in info["base_mismatch"]
    finally:
        gone.rename(base)


def test_lengths_over_the_models_positions_fail_before_training(tiny_base, small_jsonl, tmp_path):
    export = tiny_base["paths"]["export_dir"]  # 64 positions (max_position_embeddings)
    with pytest.raises(
        ConfigError,
        match=r"data\.max_length=96 is longer than the model's "
        r"positions \(.*config\.json: max_position_embeddings = 64",
    ):
        run_train(
            tmp_path / "sft",
            "experiment=sft_logic",
            f"model.name_or_path={export}",
            "data.max_length=96",
        )
    data = [o for o in synthetic_overrides(small_jsonl) if not o.startswith("data.block_size")]
    with pytest.raises(ConfigError, match=r"data\.block_size=512 .*= 64"):
        run_train(tmp_path / "cpt", *data, f"init_from={export}", "data.block_size=512")
    assert not (tmp_path / "sft" / "tokenizer").exists()  # nothing was prepared
    assert not (tmp_path / "cpt" / "tokenizer").exists()


def test_preset_without_a_base_says_how_to_get_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FMLAB_BASE_MODEL"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fmlab.train", "experiment=sft_logic"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # a user error: a message, no traceback
    assert "Traceback" not in out
    assert "model.name_or_path: not set; run `fmlab-train` first" in out
    assert "FMLAB_BASE_MODEL" in out and "Repo id" not in out
