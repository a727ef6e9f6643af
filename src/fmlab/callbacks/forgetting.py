"""The forgetting monitor: what continued training costs on the original distribution.

At every validation the monitor evaluates the *retention sets* — held-out data of the original
distribution (the non-domain components of ``data=mixture``) and optional probe sets — and the
domain's validation set, and compares them with the starting model (see
:mod:`fmlab.modules.regularizers` for what "starting model" means per method), measured once:

- ``forget/<set>/ppl`` and ``forget/<set>/ppl_ratio`` (now / start; > 1 is forgetting),
- ``forget/<set>/kl_to_base``: mean per-token KL(start || now),
- ``forget/domain/ppl``, ``forget/domain/ppl_ratio`` and ``forget/domain/gain`` (1 − ratio).

With dated release data (:class:`fmlab.releases.ReleaseDataModule`, ``data.periods``) it also
evaluates one held-out set per time period, at every validation (also the final one of the
evaluated checkpoint, so they reach ``summary.json`` and the model card):

- ``val/period/<label>/ppl`` (e.g. ``val/period/2024Q3/ppl``): how well the model knows that period.

Losses are token-weighted over the whole set, exactly as ``val/loss`` (so they equal a separate
``fmlab-eval`` of the same weights on that data). An optional budget on the worst retention
ratio stops training or warns. At the end of fit: ``report.json`` and ``report.png`` (domain gain
vs. retention loss over steps) in ``dirpath``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch
from pydantic import Field
from torch.utils.data import DataLoader

from fmlab.data.datamodule import PretrainDataModule
from fmlab.data.tokenizer import fixed_tokenizer
from fmlab.modules.regularizers import (
    capture_reference,
    model_inputs,
    reference_mode,
    token_kl,
)
from fmlab.utils import write_json

__all__ = ["ForgettingMonitor", "comparison_rows", "evaluate_set", "plot_report"]

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_set(
    pl_module: L.LightningModule, loader: DataLoader, *, kl: bool, max_batches: int | None = None
) -> dict[str, torch.Tensor]:
    """Sums over a loader: ``loss`` (token-weighted), ``base_loss``, ``kl`` and ``tokens``.

    ``base_*`` and ``kl`` come from the starting model (``kl=False``: only ``loss``/``tokens``).
    """
    model = pl_module.model
    sums = dict.fromkeys(("loss", "base_loss", "kl", "tokens"), 0.0)
    sums = {k: torch.zeros((), dtype=torch.float64, device=pl_module.device) for k in sums}
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            out, n = pl_module.forward_batch(batch)
            if n == 0:
                continue
            sums["loss"] += out.loss.double() * n
            sums["tokens"] += n
            if kl:
                labels = batch.get("labels", batch["input_ids"])
                with reference_mode(pl_module, model) as ref:
                    ref_out = ref(**model_inputs(batch), labels=labels)
                sums["base_loss"] += ref_out.loss.double() * n
                sums["kl"] += token_kl(ref_out.logits, out.logits, labels)[0].double()
    finally:
        model.train(was_training)
    return sums


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


class ForgettingMonitor(L.Callback):
    """Logs ``forget/*`` metrics at each validation and writes a report at the end of fit.

    Args:
        sets: Extra retention/probe sets: name → data module (e.g. a ``PretrainDataModule``
            node); prepared with the run's tokenizer, their validation split is used.
        max_batches: Evaluate at most this many batches per set (None: all).
        kl: Also compute ``kl_to_base`` (one more forward of the starting model per batch).
        budget: Largest allowed retention ``ppl_ratio`` (None: no budget).
        on_budget: ``stop`` training or ``alert`` (a warning, recorded in the report).
        dirpath: Where ``report.json``/``report.png`` go (None: no files).
    """

    # what a run that never validates loses (warned at start: fmlab.callbacks.progress)
    without_validation = "the forgetting monitor never runs (no forget/* metrics, no report)"

    def __init__(
        self,
        sets: dict[str, PretrainDataModule] | None = None,
        max_batches: Annotated[int, Field(gt=0)] | None = None,
        kl: bool = True,
        budget: Annotated[float, Field(gt=1.0)] | None = None,
        on_budget: Literal["stop", "alert"] = "alert",
        dirpath: str | None = None,
    ) -> None:
        self.extra = dict(sets or {})
        self.max_batches, self.kl = max_batches, kl
        self.budget, self.on_budget = budget, on_budget
        self.dirpath = Path(dirpath) if dirpath else None
        self.loaders: dict[str, DataLoader] = {}
        self.periods: dict[str, DataLoader] = {}
        self.period_base: dict[str, float] = {}  # label -> starting model's ppl
        self.period_last: dict[str, float] = {}  # val/period/<label>/ppl of the last validation
        self.base: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        loaders = dict(dm.retention_loaders()) if hasattr(dm, "retention_loaders") else {}
        for name, data in self.extra.items():
            if name in loaders or name == "domain":
                raise ValueError(f"callbacks.forgetting.sets.{name}: the name is already used")
            data.prepare(fixed_tokenizer(dm.tokenizer))
            data.trainer = trainer  # shard evaluation like the run's own data
            loaders[name] = data.val_dataloader()
        self.periods = dict(dm.period_loaders()) if hasattr(dm, "period_loaders") else {}
        if not loaders and not self.periods:
            raise ValueError(
                "callbacks.forgetting: no retention set; use data=mixture (its non-domain "
                "components), data=release (a held-out set per period) or give "
                "callbacks.forgetting.sets"
            )
        domain = dm.domain_loader() if hasattr(dm, "domain_loader") else dm.val_dataloader()
        self.loaders = {**loaders, "domain": domain}
        # before a checkpoint is restored: the reference is the starting model
        capture_reference(pl_module, pl_module.model, copy_full=True)

    # ------------------------------------------------------------------ measuring
    def _reduce(self, trainer: L.Trainer, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        return {k: float(trainer.strategy.reduce(v, reduce_op="sum")) for k, v in sums.items()}

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, loader in self.loaders.items():
            first = name not in self.base
            s = self._reduce(
                trainer,
                evaluate_set(pl_module, loader, kl=self.kl or first, max_batches=self.max_batches),
            )
            tokens = max(s["tokens"], 1.0)
            if first:  # the starting model, measured once
                self.base[name] = {"loss": s["base_loss"] / tokens, "tokens": s["tokens"]}
            loss = s["loss"] / tokens
            ratio = _ppl(loss) / _ppl(self.base[name]["loss"])
            metrics[f"forget/{name}/ppl"] = _ppl(loss)
            metrics[f"forget/{name}/ppl_ratio"] = ratio
            if name == "domain":
                metrics["forget/domain/gain"] = 1.0 - ratio
            elif self.kl:
                metrics[f"forget/{name}/kl_to_base"] = s["kl"] / tokens
        return metrics

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per-period perplexity, logged as ``val/period/<label>/ppl`` (fit and validate)."""
        if trainer.sanity_checking or not self.periods:
            return
        for label, loader in self.periods.items():
            first = label not in self.period_base and trainer.state.fn == "fit"
            sums = evaluate_set(pl_module, loader, kl=first, max_batches=self.max_batches)
            s = self._reduce(trainer, sums)
            tokens = max(s["tokens"], 1.0)
            if first:  # the starting model, measured once (for the report)
                self.period_base[label] = _ppl(s["base_loss"] / tokens)
            ppl = _ppl(s["loss"] / tokens)
            self.period_last[f"val/period/{label}/ppl"] = ppl
            # already summed over ranks: every rank logs the same value
            pl_module.log(f"val/period/{label}/ppl", ppl, sync_dist=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.loaders or trainer.state.fn != "fit":
            return
        metrics = self._measure(trainer, pl_module)
        step = int(trainer.global_step)
        if not self.history:
            start = {f"forget/{n}/ppl": _ppl(b["loss"]) for n, b in self.base.items()}
            self.history.append({"step": 0, **start})
        self.history.append({"step": step, **metrics, **self.period_last})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        self._check_budget(trainer, metrics, step)

    def _check_budget(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        if self.budget is None:
            return
        over = {
            k: v
            for k, v in metrics.items()
            if k.endswith("/ppl_ratio") and not k.startswith("forget/domain/") and v > self.budget
        }
        if not over:
            return
        self.alerts.append({"step": step, "over_budget": over, "budget": self.budget})
        action = "stopping" if self.on_budget == "stop" else "continuing (on_budget=alert)"
        log.warning(
            "forgetting budget %.3f exceeded at step %d: %s; %s", self.budget, step, over, action
        )
        if self.on_budget == "stop":
            trainer.should_stop = True

    # ------------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        """Start values, the per-validation history, budget alerts and the last numbers."""
        return {
            "base_ppl": {n: _ppl(b["loss"]) for n, b in self.base.items()},
            "period_base_ppl": self.period_base,
            "history": self.history,
            "final": self.history[-1] if self.history else {},
            "budget": self.budget,
            "alerts": self.alerts,
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.dirpath is None or not trainer.is_global_zero or not self.history:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        write_json(self.dirpath / "report.json", self.report())
        plot_report({"run": self.history}, self.dirpath / "report.png")

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "period_base": self.period_base,
            "history": self.history,
            "alerts": self.alerts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base = dict(state.get("base", {}))
        self.period_base = dict(state.get("period_base", {}))
        self.history = list(state.get("history", []))
        self.alerts = list(state.get("alerts", []))


def plot_report(histories: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Domain gain vs. retention loss over steps, one line per run (label → history).

    Left: ``forget/domain/gain`` and retention ``ppl_ratio − 1`` against steps; right: the
    trade-off (x: retention loss, y: domain gain), steps along each line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, hist) in enumerate(histories.items()):
        color = f"C{i}"
        rows = [h for h in hist if "forget/domain/gain" in h]
        keys = sorted(
            {k for h in rows for k in h if k.endswith("/ppl_ratio")} - {"forget/domain/ppl_ratio"}
        )
        steps = [0] + [h["step"] for h in rows]
        gain = [0.0] + [100 * h["forget/domain/gain"] for h in rows]
        ax1.plot(steps, gain, color=color, label=f"{label}: domain ppl gain")
        for j, key in enumerate(keys):
            loss = [0.0] + [100 * (h[key] - 1) for h in rows]
            name = key.split("/")[1]
            ax1.plot(
                steps, loss, color=color, ls=("--", ":")[j % 2], label=f"{label}: {name} ppl loss"
            )
            ax2.plot(loss, gain, color=color, marker="o", ms=3, label=f"{label} ({name})")
    ax1.set(xlabel="step", ylabel="% vs. start", title="domain gain and retention loss")
    ax2.set(xlabel="retention ppl loss (%)", ylabel="domain ppl gain (%)", title="trade-off")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a release without retention sets: none on ax2
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def comparison_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run (label → ``report.json``): domain ppl gain and retention ppl loss, in %.

    The retention columns take the worst (largest ``ppl_ratio``) retention set of each run.
    """
    rows = []
    for label, rep in reports.items():
        final, base = rep["final"], rep["base_ppl"]
        sets = [n for n in base if n != "domain"]
        worst = max(sets, key=lambda n: final[f"forget/{n}/ppl_ratio"])
        rows.append(
            {
                "run": label,
                "domain_ppl_start": base["domain"],
                "domain_ppl_end": final["forget/domain/ppl"],
                "domain_gain_pct": 100 * final["forget/domain/gain"],
                "retention_set": worst,
                "retention_ppl_start": base[worst],
                "retention_ppl_end": final[f"forget/{worst}/ppl"],
                "retention_loss_pct": 100 * (final[f"forget/{worst}/ppl_ratio"] - 1),
                "kl_to_base": final.get(f"forget/{worst}/kl_to_base"),
            }
        )
    return rows
