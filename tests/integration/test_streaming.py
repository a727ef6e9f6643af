"""Pre-training streamed from object storage (data=streaming) against a real local S3 server.

fmlab-prepare writes a corpus straight to s3:// as litdata chunks; fmlab-train streams it
through a cache limit several times smaller than the dataset (the cache directory is measured
at every step), is killed with SIGKILL and resumed, on one process and on two DDP (gloo)
processes, with per-step losses bitwise equal to uninterrupted runs. The ranks' shards are
disjoint and cover the split. Credentials reach litdata through paths.storage_options only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import FAST, ROOT, _sentences

pytest.importorskip("litdata")
pytest.importorskip("moto.server")

from tests.s3 import FAKE_SECRET, moto_options

pytestmark = pytest.mark.slow

BUCKET, DATASET = "data", "s3://data/corpus"
# ~140 KB of training chunks, 4.6x the cache limit: the cache holds validation and test whole
# (small: 2% each) and about 10 training chunks, fewer than a run reads
BLOCK, CHUNK, LIMIT = 32, "1KB", "30KB"
ONE = {"rows": 16, "steps": 12, "every": 4, "kill_after": 4}  # one process, 16 rows a step
TWO = {"rows": 8, "steps": 12, "every": 4, "kill_after": 4}  # two ranks x 8 rows


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
    with moto_options(BUCKET) as served:
        yield served


def _options_override(options: dict) -> str:
    """paths.storage_options for moto's endpoint, with a secret the runs must never write out
    (the server accepts any)."""
    region = options["client_kwargs"]["region_name"]
    return (
        f"{{endpoint_url: '{options['endpoint_url']}', key: {options['key']}, "
        f"secret: '{FAKE_SECRET}', client_kwargs: {{region_name: {region}}}}}"
    )


@pytest.fixture(scope="module")
def corpus(s3, tmp_path_factory):
    """300 documents prepared by fmlab-prepare straight to s3:// (output_format=streaming)."""
    from fmlab.config import compose_config
    from fmlab.prepare import prepare

    root = tmp_path_factory.mktemp("streaming")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"body": d}) + "\n" for d in _sentences(300, seed=3)))
    _, options = s3
    cfg = compose_config(
        "prepare",
        [
            f"sources=[{{path: '{docs}', text_field: body}}]",
            f"output_dir={DATASET}",
            "output_format=streaming",
            f"write.chunk_bytes={CHUNK}",
            f"segment.block_size={BLOCK}",
            "tokenizer.vocab_size=300",
            "filter.min_words=5",
            "split.val_fraction=0.02",
            "split.test_fraction=0.02",
            "dedup.near=false",
            "write.plots=false",
            f"storage_options={_options_override(options)}",
            "print_config=false",
            "progress=false",
        ],
        output_dir=root / "prepare-run",
    )
    card = prepare(cfg)
    return root, card


def _train_cmd(run_dir: Path, cache: Path, options: dict, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fmlab.train",
        *FAST,
        "data=streaming",
        f"data.path={DATASET}",
        f"data.cache_limit={LIMIT}",
        f"paths.storage_options={_options_override(options)}",
        f"paths.cache_dir={cache}",
        "scheduler=constant",
        "trainer.val_check_interval=12",  # at the end only
        "+model.attention_dropout=0.1",  # the resumed run must also restore the global RNG
        "export.hf=false",
        "run_test=false",
        "+callbacks.rank_losses._target_=tests.helpers.RankLosses",
        "+callbacks.rank_losses.out_dir=${paths.output_dir}",
        "+callbacks.probe._target_=tests.helpers.StreamProbe",
        "+callbacks.probe.cache_dir=${paths.cache_dir}/streaming",
        "+callbacks.probe.out_dir=${paths.output_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _plan(plan: dict, *extra: str) -> list[str]:
    return [
        f"data.batch_size={plan['rows']}",
        f"trainer.max_steps={plan['steps']}",
        f"callbacks.checkpoint_last.every_n_train_steps={plan['every']}",
        *extra,
    ]


def _ckpt_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except Exception:  # not written yet
        return None


def _losses(run_dir: Path, world: int) -> list[dict[int, float]]:
    out = []
    for r in range(world):
        raw = json.loads((run_dir / f"losses_rank{r}.json").read_text())
        out.append({int(k): v for k, v in raw.items()})
    return out


def _probes(run_dir: Path, world: int) -> list[dict]:
    return [json.loads((run_dir / f"probe_rank{r}.json").read_text()) for r in range(world)]


def _kill_and_resume(tmp: Path, options: dict, plan: dict, *extra: str) -> tuple[Path, ...]:
    """An uninterrupted run and a run killed (SIGKILL, every process of it) after its first
    checkpoint, side by side; then the killed run resumed in a new run directory."""
    env = {**os.environ}
    full, killed, resumed = tmp / "full", tmp / "killed", tmp / "resumed"
    args = _plan(plan, *extra)
    log = (tmp / "full.log").open("w")
    reference = subprocess.Popen(
        _train_cmd(full, tmp / "cache-full", options, *args),
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    victim = subprocess.Popen(
        _train_cmd(killed, tmp / "cache-killed", options, *args),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the DDP ranks die together
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and (_ckpt_step(last) or 0) < plan["kill_after"]:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    reference.wait(timeout=600)
    log.close()
    assert reference.returncode == 0, (tmp / "full.log").read_text()[-6000:]
    proc = subprocess.run(
        # another cache directory: as on another machine (litdata's state names its cache)
        _train_cmd(resumed, tmp / "cache-resumed", options, *args, f"ckpt_path={killed}"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return full, killed, resumed


def _check_resume(full: Path, killed: Path, resumed: Path, plan: dict, world: int) -> int:
    step = _ckpt_step(killed / "checkpoints" / "last.ckpt")
    assert step is not None and plan["kill_after"] <= step < plan["steps"], step
    reference, after = _losses(full, world), _losses(resumed, world)
    for rank in range(world):
        assert sorted(reference[rank]) == list(range(plan["steps"]))
        assert sorted(after[rank]) == list(range(step, plan["steps"]))
        assert after[rank] == {s: reference[rank][s] for s in after[rank]}, rank  # bitwise
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["global_step"] == plan["steps"]
    return step


def _limit_bytes() -> int:
    from fmlab.data.streaming.cache import parse_size

    return parse_size(LIMIT)


@pytest.mark.timeout(900)  # three runs, two of them side by side, on a machine shared with CI
def test_one_process_streams_under_the_cache_limit_and_resumes_exactly(corpus, s3, tmp_path):
    fs, options = s3
    assert fs.du(f"{DATASET}/train") > 4 * _limit_bytes()  # several times the cache limit
    full, killed, resumed = _kill_and_resume(tmp_path, options, ONE)
    _check_resume(full, killed, resumed, ONE, world=1)
    (probe,) = _probes(full, 1)
    assert probe["samples"] == 2 * ONE["steps"]
    assert 0 < probe["largest"] <= _limit_bytes()  # sampled before and after every step
    summary = json.loads((full / "summary.json").read_text())
    data = summary["data"]
    assert data["path"] == DATASET and data["streaming"]["cache_limit"] == _limit_bytes()
    rows = ONE["rows"] * ONE["steps"]
    assert summary["tokens_seen"] == rows * BLOCK
    # the run read more training chunks than the cache keeps of them: chunks were evicted
    row_bytes = fs.du(f"{DATASET}/train") / data["train"]["rows"]
    assert rows * row_bytes > data["streaming"]["budgets"]["train"]
    for run in (full, killed, resumed):  # the secret went through storage_options only
        for path in run.rglob("*"):
            if path.is_file() and path.suffix in (".yaml", ".json", ".log", ".csv", ".txt"):
                assert FAKE_SECRET not in path.read_text(errors="ignore"), path


@pytest.mark.timeout(900)
def test_two_ddp_processes_read_disjoint_rows_and_resume_exactly(corpus, s3, tmp_path):
    _, options = s3
    full, killed, resumed = _kill_and_resume(tmp_path, options, TWO, "trainer=ddp_cpu")
    _check_resume(full, killed, resumed, TWO, world=2)
    probes = _probes(full, 2)
    seen = [Counter(h for rows in p["rows"].values() for h in rows) for p in probes]
    assert seen[0].total() == seen[1].total() == TWO["rows"] * TWO["steps"]
    assert seen[0] != seen[1]  # each rank its own rows (the full split check is below)
    assert max(p["largest"] for p in probes) <= _limit_bytes()  # one cache for both ranks


def test_rank_shards_are_disjoint_and_cover_the_split(corpus, s3, tmp_path, monkeypatch):
    """Each rank's training epoch and evaluation pass, with litdata's sharding for rank r of 2:
    no row twice; training covers all but the last partial global batch, evaluation all."""
    from types import SimpleNamespace

    from fmlab.data.streaming import StreamingDataModule

    _, options = s3
    dm = StreamingDataModule(
        DATASET, batch_size=8, cache_dir=str(tmp_path), cache_limit=LIMIT, storage_options=options
    )
    dm.prepare(None)
    n = dm.sizes["train"].rows

    def rows(loader) -> Counter:
        return Counter(tuple(r.tolist()) for b in loader for r in b["input_ids"])

    everything = {"train": rows(dm.eval_loader("train")), "validation": rows(dm.val_dataloader())}
    seen: dict[str, list[Counter]] = {"train": [], "validation": []}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, num_nodes=1)
        seen["train"].append(rows(dm.train_dataloader()))
        seen["validation"].append(rows(dm.val_dataloader()))
    # rows as multisets (a tiny language repeats some blocks): a row read by both ranks would
    # be counted more often than the split holds it
    assert seen["validation"][0] + seen["validation"][1] == everything["validation"]
    got = seen["train"][0] + seen["train"][1]
    assert everything["train"].total() == n
    assert got <= everything["train"] and got.total() == (n // 16) * 16  # the last partial
    # global batch (2 ranks x 8 rows) is dropped, as with data=prepared


def _mixture(tmp: Path, options: dict, small_jsonl: Path) -> Any:
    """The streamed corpus (the domain) with 25% replay of a local one, 8 rows a batch."""
    from fmlab.data.datamodule import PretrainDataModule
    from fmlab.data.mixture import MixtureDataModule
    from fmlab.data.streaming import StreamingDataModule

    new = StreamingDataModule(
        DATASET, cache_dir=str(tmp), cache_limit=LIMIT, storage_options=options
    )
    old = PretrainDataModule(
        sources=[{"path": str(small_jsonl), "text_field": "body"}],
        block_size=BLOCK,
        val_fraction=0.1,
        test_fraction=0.1,
        cache_dir=str(tmp),
        progress=False,
    )
    dm = MixtureDataModule({"new": new, "old": old}, domain="new", replay=0.25, batch_size=8)
    dm.prepare(None)
    return dm


def test_mixture_with_a_streamed_component_keeps_shares_and_resumes(
    corpus, s3, small_jsonl, tmp_path
):
    """Every batch holds exactly 2 replay rows of 8; the loader state saved mid-epoch (through
    a weights_only checkpoint round trip) continues with the same rows; a streamed component
    continues into its next epoch from a saved position as it would have read on."""
    import io

    from fmlab.data.streaming.mixture import _StreamedRows

    _, options = s3
    dm = _mixture(tmp_path / "a", options, small_jsonl)
    loader = dm.train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(5)]
    buf = io.BytesIO()
    torch.save(loader.state_dict(), buf)
    rest = [next(it) for _ in range(5)]
    assert all(int(b["replay"].sum()) == 2 for b in first + rest)
    assert dm.rows_taken() == {"new": 60, "old": 20}

    again = _mixture(tmp_path / "b", options, small_jsonl)
    loader = again.train_dataloader()
    buf.seek(0)
    loader.load_state_dict(torch.load(buf, weights_only=True))
    resumed = [b for _, b in zip(range(5), loader)]
    for a, b in zip(rest, resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["source"], b["source"])

    stream = _StreamedRows(again.components["new"])
    n = stream.length
    read = [stream.row(j)["input_ids"] for j in range(n + 2)]  # through the epoch boundary
    back = _StreamedRows(again.components["new"])
    for j in range(n - 1, n + 2):
        assert torch.equal(back.row(j)["input_ids"], read[j]), j
    assert not all(torch.equal(read[j], read[n + j]) for j in range(2))  # a new shuffle


def test_train_on_a_mixture_with_a_streamed_domain_and_the_forgetting_monitor(
    corpus, s3, small_jsonl, tmp_path
):
    from tests.conftest import run_train

    _, options = s3
    summary = run_train(
        tmp_path / "run",
        "data=mixture",
        "+data@data.components.web=streaming",  # replace the preset's domain by a stream
        "~data.components.code",
        "data.domain=web",
        f"data.components.web.path={DATASET}",
        f"data.components.web.cache_limit={LIMIT}",
        f"data.components.general.sources=[{{path: '{small_jsonl}', text_field: body}}]",
        f"data.components.general.block_size={BLOCK}",
        "data.components.general.val_fraction=0.1",
        "data.components.general.test_fraction=0.1",
        "data.replay=0.25",
        "data.batch_size=8",
        f"paths.storage_options={_options_override(options)}",
        "callbacks=continual",
        "callbacks.forgetting.max_batches=2",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "callbacks.checkpoint_last.every_n_train_steps=4",
        "run_test=false",
    )
    run = Path(summary["paths"]["output_dir"])
    report = json.loads((run / "forgetting" / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [0, 4, 8]
    assert "forget/general/ppl_ratio" in report["final"]
    assert summary["data"]["mixture"]["shares"] == {"general": 0.25, "web": 0.75}
    card = json.loads((run / "export" / "fmlab_card.json").read_text())
    seen = {k: v["tokens_seen"] for k, v in card["data_by_source"].items()}
    assert seen == {"web": 8 * 6 * BLOCK, "general": 8 * 2 * BLOCK}  # 25% replay, exactly
    assert summary["tokens_per_s"] > 0 and summary["tokens_seen"] == 8 * 8 * BLOCK
