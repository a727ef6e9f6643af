"""The Spark engine's config and checks: no JVM needed (they run before Spark starts)."""

from __future__ import annotations

import pytest

from fmlab.config import ConfigError, build, compose_config, validate_config
from fmlab.data.pipeline import Pack, PrepareError, Structure
from fmlab.data.spark import SparkSettings, prepare_on_spark
from fmlab.prepare import STAGES, PrepareSchema, prepare

REQUIRED = ["sources=[x.jsonl]", "output_dir=out"]


def test_engine_spark_composes_validates_and_builds(tmp_path):
    cfg = compose_config(
        "prepare",
        [*REQUIRED, "engine=spark", "spark.master='local[3]'", "spark.conf={spark.a.b: 4g}"],
        output_dir=tmp_path,
    )
    validate_config(cfg, root=PrepareSchema, groups=(*STAGES, "tokenizer", "spark"))
    settings = build(cfg.spark, "spark")
    assert isinstance(settings, SparkSettings) and settings.master == "local[3]"
    assert settings.conf == {"spark.a.b": "4g"} and settings.is_local()
    assert settings.daemon_conf() == {"spark.python.daemon.module": "fmlab.data.spark.daemon"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine=flink", r"engine: Input should be 'local' or 'spark'"),
        ("+spark.mastr=yarn", r"spark.mastr: unknown key .*did you mean 'master'"),
        ("spark.preload=maybe", r"spark.preload: Input should be a valid boolean"),
    ],
)
def test_bad_spark_settings_fail_naming_the_key(override, message, tmp_path):
    cfg = compose_config("prepare", [*REQUIRED, "engine=spark", override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)


def test_master_decides_local_mode(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert SparkSettings().is_local()  # plain python: pyspark starts local[*]
    assert not SparkSettings(master="yarn").is_local()
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "4040")  # started by spark-submit
    assert not SparkSettings().is_local()
    assert SparkSettings(master="local[2]").is_local()


def test_bad_combinations_fail_before_spark_starts(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    with pytest.raises(PrepareError, match="engine=spark needs output_dir"):
        prepare_on_spark([str(src)], None)
    with pytest.raises(PrepareError, match="segment needs a tokenizer"):
        prepare_on_spark([str(src)], str(tmp_path / "o"), segment=Pack(block_size=8))
    with pytest.raises(PrepareError, match="does not fit structure.kind='sft'"):
        prepare_on_spark(
            [str(src)],
            str(tmp_path / "o"),
            structure=Structure(kind="sft"),
            segment=Pack(block_size=8),
            tokenizer=lambda **kw: None,
        )
    with pytest.raises(PrepareError, match="no such file"):
        prepare_on_spark([str(tmp_path / "missing.jsonl")], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_foreign_output_dir_is_refused_before_any_work(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PrepareError, match="is not an fmlab prepared dataset"):
        prepare_on_spark([str(src)], str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
