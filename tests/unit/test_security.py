"""Security: allow-listed `_target_`s only, no remote code unless asked, no secrets in outputs."""

from __future__ import annotations

import json
import sys

import pytest
from omegaconf import OmegaConf
from transformers import LlamaConfig

from fmlab.config import ConfigError, build, compose_config, validate_config
from fmlab.models import pretrained
from fmlab.utils.secrets import REDACTED, redact, redact_text, scrub_file


@pytest.fixture()
def trap_module(tmp_path, monkeypatch):
    """An importable module whose import leaves a marker file: proof that code ran."""
    marker = tmp_path / "imported"
    (tmp_path / "trapmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\ndef run(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("trapmod", None)


def test_targets_outside_the_allow_list_are_refused_before_import(tmp_path, trap_module):
    cfg = compose_config(
        "train", ["callbacks.progress_bar._target_=trapmod.run"], output_dir=tmp_path
    )
    with pytest.raises(
        ConfigError, match=r"callbacks\.progress_bar\._target_: 'trapmod\.run' is not allowed"
    ):
        validate_config(cfg)
    # a config read back from a run directory or checkpoint goes through build(): same rule
    stored = OmegaConf.create({"_target_": "trapmod.run", "inner": {"_target_": "os.system"}})
    with pytest.raises(
        ConfigError, match="'trapmod.run' is not allowed.*'os.system' is not allowed"
    ):
        build(stored, "module")
    assert not trap_module.exists()


def test_allow_list_is_extended_only_from_the_environment(tmp_path, trap_module, monkeypatch):
    monkeypatch.setenv("FMLAB_ALLOWED_TARGETS", "tests.helpers.,trapmod.")
    assert build(OmegaConf.create({"_target_": "trapmod.run", "_partial_": True}), "x") is not None
    assert trap_module.exists()


def test_remote_code_is_refused_unless_trusted(tmp_path):
    model_dir = tmp_path / "model"
    LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
    ).save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (model_dir / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (model_dir / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    with pytest.raises(ValueError, match="names custom code.*model.trust_remote_code=true"):
        pretrained(name_or_path=str(model_dir))
    assert not marker.exists()


def test_redaction_by_key_by_value_and_in_urls(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-aws-secret-123")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-4567890")
    data = {
        "storage_options": {"key": "AKIAFAKE", "secret": "s3cr3t", "endpoint_url": "http://x"},
        "note": "uses fake-aws-secret-123 inline",
        "url": "s3://user:pa55word@host/bucket",
        "tokenizer": {"vocab_size": 300},
        "tokens_seen": 1000,
        "hf_token": None,
    }
    out = redact(data)
    assert out["storage_options"] == {
        "key": REDACTED,
        "secret": REDACTED,
        "endpoint_url": "http://x",
    }
    assert out["note"] == f"uses {REDACTED} inline"
    assert out["url"] == f"s3://user:{REDACTED}@host/bucket"
    assert out["tokenizer"] == {"vocab_size": 300} and out["tokens_seen"] == 1000
    assert out["hf_token"] is None
    assert redact_text("Bearer tok-4567890") == f"Bearer {REDACTED}"
    # an override quoted twice, as Hydra writes it to .hydra/overrides.yaml
    line = "- 'paths.storage_options={key: ab, secret: ''s3cr3t-x'', region: ''eu''}'"
    assert "s3cr3t" not in redact_text(line) and "''eu''" in redact_text(line)


def test_scrub_hydra_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-fake-key-0001")
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(
        "- data.storage_options.secret=plain-literal\n- seed=3\n- logger.note=wandb-fake-key-0001\n"
    )
    scrub_file(overrides)
    text = overrides.read_text()
    assert "plain-literal" not in text and "wandb-fake-key-0001" not in text
    assert "- seed=3" in text
