"""The pieces of the command line: error classes and messages, did-you-mean, failed-attempt
clean-up, the verbose switch, console filtering and train.log, the progress line, plots."""

from __future__ import annotations

import errno
import io
import json
import logging
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest

from fmlab.cli import _take_verbose_switch, discard_failed_attempt
from fmlab.cli.console import setup_job_logging
from fmlab.cli.errors import classify, print_failure
from fmlab.config import ConfigError, compose_config
from fmlab.config.hydra_errors import ComposeError


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["trainer.max_stpes=5"], "did you mean trainer.max_steps=5?"),
        (["trainr.max_steps=5"], "did you mean trainer.max_steps=5?"),
        (["callbacks.throughput.windw=3"], "did you mean callbacks.throughput.window=3?"),
        (["trainer.detect_anomly=true"], "did you mean +trainer.detect_anomaly=true?"),
        (["method=lorra"], "did you mean method=lora?"),
        (["method=false"], "'method' is a config group"),
        (["method=1"], "options: direft, dora, full, lora, loreft, pretrain, qlora"),
        (["trainer.max_steps=["], "trainer.max_steps=[: not a valid override"),
    ],
)
def test_compose_errors_name_the_override_and_the_fix(tmp_path, overrides, phrase):
    with pytest.raises(ComposeError) as info:
        compose_config("train", overrides, output_dir=tmp_path)
    assert phrase in str(info.value)
    assert "Config search path" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # and a HydraException, for older callers


def test_unknown_top_level_key_suggests_the_closest(tmp_path):
    from fmlab.config import validate_config

    cfg = compose_config("train", ["+print_confg=true"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"print_confg: unknown key; did you mean 'print_config'"):
        validate_config(cfg)


def test_expected_failures_and_bugs_are_told_apart():
    from fmlab.data.sources import DataSourceError
    from fmlab.reliability import NonFiniteError

    assert classify(ConfigError("x")).code == 2
    assert classify(DataSourceError("source 'a': no rows")).code == 2
    try:  # a ValueError re-raised from a user error is still the user's
        try:
            raise ConfigError("bad row")
        except ConfigError as err:
            raise ValueError("bad row") from err
    except ValueError as wrapped:
        assert classify(wrapped).code == 2
    assert classify(NonFiniteError("loss is nan")) == classify(NonFiniteError("loss is nan"))
    assert classify(NonFiniteError("loss is nan")).code == 1
    assert not classify(NonFiniteError("loss is nan")).bug
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/x")
    assert "cannot create the run directory" in classify(gone, before_job=True).message
    assert "check the path" in classify(gone).message
    bug = classify(RuntimeError("shape mismatch"))
    assert bug.bug and bug.code == 1


def test_a_value_error_of_fmlab_naming_its_key_is_the_users():
    from fmlab.models.build import llama

    with pytest.raises(ValueError) as info:
        llama(preset="huge", vocab_size=10, max_position_embeddings=8)
    assert classify(info.value).code == 2 and not classify(info.value).bug
    try:  # the same words from inside a library are not ours to judge
        exec(compile("raise ValueError(\"model.preset='huge': unknown\")", "/lib/x.py", "exec"))
    except ValueError as err:
        assert classify(err).bug


def test_a_bug_keeps_its_traceback_and_an_error_does_not(capsys):
    def deep() -> None:
        raise RuntimeError("shape mismatch")

    try:
        deep()
    except RuntimeError as err:
        print_failure("fmlab-train", err, classify(err), verbose=False, log_file="/r/train.log")
    err = capsys.readouterr().err
    assert "Traceback" in err and "in deep" in err
    assert "unexpected error (also in /r/train.log): RuntimeError: shape mismatch" in err
    print_failure("fmlab-train", ConfigError("x: bad"), classify(ConfigError("x")), verbose=False,
                  log_file=None)  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("fmlab-train: error: x") and "Traceback" not in err
    assert "verbose=true" in err


def test_verbose_switch_is_taken_off_the_command_line(monkeypatch):
    monkeypatch.delenv("FMLAB_VERBOSE", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["fmlab-train", "verbose=true", "trainer.max_steps=3"])
    _take_verbose_switch()
    assert sys.argv == ["fmlab-train", "trainer.max_steps=3"]
    import os

    assert os.environ["FMLAB_VERBOSE"] == "1"


def _attempt(run: Path, **files: str) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("x: 1")
    (run / "train.log").write_text("error\n")
    for name, text in files.items():
        (run / name).write_text(text)
    return run


def test_a_failed_attempt_leaves_no_run_dir_but_results_are_kept(tmp_path):
    failed = {"status": "failed", "error": "bad"}
    assert discard_failed_attempt(
        _attempt(tmp_path / "a", **{"summary.json": json.dumps(failed)}), "train.log"
    )
    assert not (tmp_path / "a").exists()
    kept = _attempt(tmp_path / "b", **{"summary.json": json.dumps({**failed, "val/loss": 2.0})})
    assert not discard_failed_attempt(kept, "train.log") and kept.is_dir()
    resumed = _attempt(tmp_path / "c")
    (resumed / "checkpoints").mkdir()
    assert not discard_failed_attempt(resumed, "train.log") and resumed.is_dir()
    foreign = tmp_path / "d"  # not made by Hydra: never touched
    foreign.mkdir()
    assert not discard_failed_attempt(foreign, "train.log") and foreign.is_dir()


@pytest.fixture
def job_logging(tmp_path):
    """Root logging as Hydra configures a job (console + file), restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    console = io.StringIO()
    root.handlers = [logging.StreamHandler(console), logging.FileHandler(tmp_path / "train.log")]
    root.setLevel(logging.INFO)
    try:
        yield console, tmp_path / "train.log", setup_job_logging(verbose=False)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, _, warnings.showwarning = saved
        root.setLevel(saved[1])


def test_console_is_filtered_and_train_log_keeps_the_run(job_logging):
    console, log_file, path = job_logging
    assert path == str(log_file)
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.info("GPU available: False, used: False")
    lightning_log.info("💡 Tip: For seamless cloud logging, try installing litlogger")
    logging.getLogger("fmlab.progress").info("step 8: val/loss 3.1")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning, stacklevel=1)
        warnings.warn("data.block_size is larger than the model's", UserWarning, stacklevel=1)
    from fmlab.utils import print_table

    print_table("summary", {"val/loss": 3.14159})
    for handler in logging.getLogger().handlers:
        handler.flush()
    shown, kept = console.getvalue(), log_file.read_text()
    assert "step 8: val/loss 3.1" in shown and "step 8: val/loss 3.1" in kept
    assert "GPU available" not in shown and "GPU available" in kept
    assert "set_vital" not in shown and "set_vital" in kept
    assert "warning: UserWarning: data.block_size is larger" in shown
    assert "Tip:" not in shown + kept
    assert "3.142" in kept and "3.142" not in shown  # the table: printed by rich, logged once


def test_live_line_draws_on_a_terminal_only():
    from fmlab.utils.printing import LiveLine

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    LiveLine(tty).show("step 3/10")
    LiveLine(pipe).show("step 3/10")
    assert tty.getvalue() == "\r\033[Kstep 3/10" and pipe.getvalue() == ""


def test_progress_line_counts_steps_toward_max_steps():
    from fmlab.callbacks.progress import StepProgress

    bar = StepProgress()
    trainer = SimpleNamespace(global_step=0, max_steps=600, callback_metrics={})
    module = SimpleNamespace(tokens_seen=0)
    bar.on_train_start(trainer, module)
    bar._t0 -= 10.0  # 10 s ago
    bar._last = (bar._last[0] - 10.0, 0)
    trainer.global_step, module.tokens_seen = 120, 120_000
    import torch

    trainer.callback_metrics = {"train/loss": torch.tensor(3.21449)}
    text = bar.text(trainer, module)
    assert text.startswith("step 120/600 ") and " 20% " in text
    assert "0:00:10<0:00:40" in text and "loss 3.214" in text and "12.0k tok/s" in text


class _AtValidation(L.Callback):
    without_validation = "the probe never runs"

    def on_validation_end(self, trainer, pl_module) -> None:
        pass


def test_a_run_that_never_validates_says_so():
    from fmlab.callbacks import Throughput
    from fmlab.callbacks.progress import schedule_warnings

    def trainer(max_steps: int) -> L.Trainer:
        return L.Trainer(
            max_steps=max_steps, val_check_interval=50, check_val_every_n_epoch=None,
            callbacks=[_AtValidation(), Throughput()], logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
        )  # fmt: skip

    (message,) = schedule_warnings(trainer(20))
    assert "max_steps=20 < trainer.val_check_interval=50" in message
    assert "the probe never runs" in message and "Throughput" not in message
    assert schedule_warnings(trainer(50)) == []


def test_plots_of_a_run_skip_the_post_fit_evaluation(tmp_path):
    from fmlab.evaluation.plots import plot_run

    csv_file = tmp_path / "metrics.csv"
    rows = ["epoch,lr-AdamW,perf/tokens_per_s,step,train/loss,val/loss"]
    rows += [f"0,0.001,100,{s},{5 - s / 10},," for s in range(10)]
    rows += ["0,,,4,,4.6", "1,,,10,,4.4"]  # a validation during fit, then the post-fit one
    csv_file.write_text("\n".join(rows) + "\n")
    written = plot_run(csv_file, tmp_path / "plots")
    assert sorted(written) == ["plot_loss", "plot_lr", "plot_throughput"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in written.values())
    assert plot_run(tmp_path / "missing.csv", tmp_path / "plots") == {}


def test_lm_eval_refuses_reft_before_any_compute():
    from fmlab.evaluation.lm_eval import check_lm_eval
    from fmlab.methods import loreft
    from fmlab.models.build import llama

    base = llama(preset="tiny", vocab_size=32, max_position_embeddings=16)
    check_lm_eval({"tasks": ["x"]}, base)  # a plain HF model is fine
    reft = loreft(base, rank=2)
    check_lm_eval(None, reft)  # no lm_eval: nothing to refuse
    with pytest.raises(ConfigError, match="ReFT models are not supported by lm-evaluation"):
        check_lm_eval({"tasks": ["x"]}, reft)


def test_resume_command_continues_in_the_same_run_dir(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from fmlab.config import CONF_DIR
    from fmlab.reliability import resume_command

    monkeypatch.setattr(sys, "argv", ["/venv/bin/fmlab-train"])
    GlobalHydra.instance().clear()
    overrides = ["trainer.max_steps=5", "ckpt_path=/other/run", "data.sources=[a b.jsonl]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        HydraConfig.instance().set_config(compose("train", overrides, return_hydra_config=True))
        # the run continues from its own checkpoint: not the ckpt_path it started from
        assert resume_command(tmp_path) == (
            f"fmlab-train trainer.max_steps=5 'data.sources=[a b.jsonl]' hydra.run.dir={tmp_path}"
        )
        named = compose("train", ["run_name=exp", "seed=3"], return_hydra_config=True)
        HydraConfig.instance().set_config(named)
        assert resume_command(tmp_path) == "fmlab-train run_name=exp seed=3"  # the same command
    GlobalHydra.instance().clear()
