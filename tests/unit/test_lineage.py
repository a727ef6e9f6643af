"""fmlab.lineage: resolved model references and content fingerprints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fmlab.config import ConfigError
from fmlab.lineage import ModelRef, check_fingerprint, fingerprint, resolve_model_ref


def _tiny(path: Path, seed: int, **config) -> Path:
    """A tiny Llama saved at ``path`` (32 positions); ``config`` overrides its settings."""
    torch.manual_seed(seed)
    shape = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    shape.update(num_attention_heads=2, max_position_embeddings=32, **config)
    LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(str(path))
    return path


def test_fingerprint_follows_content_not_place(tmp_path: Path) -> None:
    a = _tiny(tmp_path / "a", seed=0)
    b = _tiny(tmp_path / "b", seed=1)  # same architecture, other weights
    copy = tmp_path / "elsewhere" / "a"
    shutil.copytree(a, copy)
    assert fingerprint(a) == fingerprint(copy)
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a).startswith("xxh3:")


def test_fingerprint_cache_is_keyed_by_mtime(tmp_path: Path) -> None:
    a = _tiny(tmp_path / "a", seed=0)
    cache = tmp_path / "cache"
    first = fingerprint(a, cache_dir=cache)
    assert any((cache / "fingerprints").rglob("*"))
    assert fingerprint(a, cache_dir=cache) == first
    _tiny(a, seed=2)  # rewritten in place: new mtime, new content
    assert fingerprint(a, cache_dir=cache) != first


def test_resolve_follows_symlinks_and_finds_the_run(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00-000000"
    _tiny(run / "export", seed=0)
    (run / "config.yaml").write_text("task_name: train\n")
    latest = tmp_path / "logs" / "train" / "latest"
    latest.symlink_to(run, target_is_directory=True)
    ref = resolve_model_ref(str(latest), "model.name_or_path")
    assert ref.kind == "local"
    assert ref.path == str((run / "export").resolve())
    assert ref.run_id == run.name and ref.run_dir == str(run.resolve())
    assert ref.given == str(latest)
    assert ModelRef.from_dict(ref.to_dict()) == ref
    assert resolve_model_ref(str(latest / "export"), "k").fingerprint == ref.fingerprint


@pytest.mark.parametrize("value", [None, "", "logs/train/latest/export", "./nothing", "/no/such"])
def test_missing_model_names_the_key_and_the_fix(value, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ConfigError, match=r"^model\.name_or_path: (not set|no model at).*fmlab-train"
    ):
        resolve_model_ref(value, "model.name_or_path")


def test_hub_name_is_recorded_unpinned_without_network() -> None:
    ref = resolve_model_ref("sshleifer/tiny-gpt2", "model.name_or_path")
    assert ref.kind == "hub" and ref.path == "sshleifer/tiny-gpt2"
    assert ref.fingerprint.startswith("hub:sshleifer/tiny-gpt2@")
    pinned = resolve_model_ref("org/m", "k", revision="a" * 40)
    assert pinned.fingerprint == f"hub:org/m@{'a' * 40}" and pinned.revision == "a" * 40


def test_check_fingerprint_names_both(tmp_path: Path) -> None:
    a = resolve_model_ref(str(_tiny(tmp_path / "a", seed=0)), "k")
    b = resolve_model_ref(str(_tiny(tmp_path / "b", seed=1)), "k")
    assert check_fingerprint(a.to_dict(), a, what="adapter x") is None
    assert check_fingerprint(None, b, what="adapter x") is None
    with pytest.raises(ConfigError, match="allow_base_mismatch") as err:
        check_fingerprint(a, b, what="adapter x")
    assert a.fingerprint in str(err.value) and b.fingerprint in str(err.value)
    note = check_fingerprint(a, b, what="adapter x", allow_mismatch=True)
    assert a.fingerprint in note and b.fingerprint in note


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "llama", "max_position_embeddings": 128}, ("max_position_embeddings", 128)),
        ({"model_type": "gpt2", "n_positions": 64, "n_ctx": 64}, ("n_positions", 64)),
        ({"model_type": "mpt", "max_seq_len": 2048}, ("max_seq_len", 2048)),
        ({"model_type": "chatglm", "seq_length": 8192}, ("seq_length", 8192)),
        (
            {"text_config": {"max_position_embeddings": 4096}},
            ("text_config.max_position_embeddings", 4096),
        ),
        ({"model_type": "mamba"}, None),
    ],
)
def test_positions_key_differs_by_architecture(config, expected) -> None:
    from fmlab.models.positions import config_positions

    assert config_positions(config) == expected


def test_length_check_names_both_keys(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from fmlab.models.positions import check_generation, check_lengths

    ref = resolve_model_ref(str(_tiny(tmp_path / "m", seed=0)), "model.name_or_path")
    from fmlab.models.positions import starting_positions

    limit = starting_positions({"model": ref})
    assert limit[1] == 32 and limit[0].endswith("config.json: max_position_embeddings")
    ok = OmegaConf.create({"data": {"max_length": 32}, "task": {"t": {"max_length": None}}})
    check_lengths(ok, limit)
    bad = OmegaConf.create({"data": {"components": {"code": {"block_size": 33}}}})
    with pytest.raises(ConfigError, match=r"data\.components\.code\.block_size=33 .*= 32"):
        check_lengths(bad, limit)
    with pytest.raises(ConfigError, match=r"max_new_tokens=8 .*= 32"):
        check_generation([10, 25], 8, limit, "max_new_tokens")
    check_generation([10, 24], 8, limit, "max_new_tokens")
