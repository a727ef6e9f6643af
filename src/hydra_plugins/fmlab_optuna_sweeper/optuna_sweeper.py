"""``hydra/sweeper=fmlab_optuna``: an Optuna search as a Hydra sweeper, on current Optuna.

Why not hydra-optuna-sweeper: its last release (1.3.0) pins optuna<3 (2.10.1), and that optuna's
sqlite storage fails with SQLAlchemy 2.x, so a search could not be stored or resumed next to a
current stack. This sweeper keeps its configuration surface (``direction``, ``study_name``,
``storage``, ``n_trials``, ``n_jobs``, ``sampler``, ``params`` in Hydra's sweep syntax) on
optuna>=4 with SQLAlchemy 2.

Search space: ``params`` entries (and sweep overrides on the command line) in Hydra syntax:
``choice(a, b)``, ``range(1, 9, 2)`` (a finite set), ``interval(lo, hi)`` (float, or int if both
ends are ints), ``tag(log, interval(lo, hi))`` (log scale). Other overrides are fixed.

Resume: with ``storage`` (a sqlite file path or any SQLAlchemy URL) the study is loaded by
``study_name`` and ``n_trials`` counts the trials it already has; trials left RUNNING by a killed
sweep are marked FAIL. Each job's number is its trial number.

The objective is the job's return value: fmlab-train returns ``cfg.optimized_metric``, a
validation metric. ``None`` (a failed job, recorded in its summary.json) makes the trial FAIL.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "_target_": f"{__name__}.FmlabOptunaSweeper",
    # the sampler node reaches __init__ as config and is built in _study(): without optuna
    # (the [sweeps] extra) setup() then says what to install instead of Hydra failing to
    # locate optuna.samplers.TPESampler
    "_recursive_": False,
    "direction": "minimize",
    "study_name": None,
    "storage": None,
    "n_trials": 20,
    "n_jobs": 1,
    "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 1234},
    "params": {},
}
ConfigStore.instance().store(
    group="hydra/sweeper", name="fmlab_optuna", node=DEFAULTS, provider="fmlab"
)


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``)."""
    import optuna.distributions as D

    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep | RangeSweep):
        return D.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        lo, hi = value.start, value.end
        if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
            return D.IntDistribution(lo, hi, log=log_scale)
        return D.FloatDistribution(float(lo), float(hi), log=log_scale)
    raise ValueError(f"{override.input_line}: not a search dimension (use choice/range/interval)")


def storage_url(storage: str | None) -> str | None:
    """A SQLAlchemy URL as is; a plain path becomes a sqlite file (its folder is created)."""
    if not storage or "://" in storage:
        return storage or None
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class FmlabOptunaSweeper(Sweeper):
    """Ask Optuna for ``n_jobs`` trials at a time, launch them, tell it their validation metric.

    Args:
        direction: ``minimize`` or ``maximize`` (must match ``optimized_metric``).
        study_name: Name of the study in ``storage`` (needed to resume).
        storage: sqlite file path or SQLAlchemy URL; ``None`` keeps the study in memory.
        n_trials: Trials the study should have in total (resuming counts the earlier ones).
        n_jobs: Trials launched together (a batch; parallel with a parallel launcher).
        sampler: Optuna sampler node (``_target_``), e.g. ``optuna.samplers.TPESampler``.
        params: Search space: config key -> Hydra sweep expression.
    """

    def __init__(
        self,
        direction: str = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: Any = None,
        params: Any = None,
    ) -> None:
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction={direction}: expected minimize or maximize")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg = sampler
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the config and instantiate the launcher that runs the trials."""
        from fmlab.utils.optional import require

        require("optuna", "sweeps", "hydra/sweeper=fmlab_optuna (hparams_search=...)")
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        parser = OverridesParser.create()
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space, fixed = {}, {}
        for override in parser.parse_overrides(lines):
            key = override.get_key_element()
            if override.is_sweep_override():
                space[key] = distribution(override)
                fixed.pop(key, None)
            else:
                fixed[key] = override.get_value_element_as_str()
                space.pop(key, None)
        if not space:
            raise ValueError("fmlab_optuna: no search dimension (hydra.sweeper.params is empty)")
        return space, fixed

    def _study(self) -> Any:
        import optuna
        from hydra.utils import instantiate

        sampler = self.sampler_cfg  # a config node (DEFAULTS: not built by Hydra) or a sampler
        if isinstance(sampler, dict | DictConfig):
            sampler = instantiate(sampler)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage_url(self.storage),
            sampler=sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        for trial in study.get_trials(deepcopy=False):  # left running by a killed sweep
            if not trial.state.is_finished():
                log.warning("trial %d was left %s: marking it FAIL", trial.number, trial.state.name)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return study

    def sweep(self, arguments: list[str]) -> None:
        """Run the search; write ``optimization_results.yaml`` and ``trials.csv``."""
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = self._space(arguments)
        study = self._study()
        todo = self.n_trials - len(study.trials)
        log.info("study %s: %d trials stored, %d to run", study.study_name, len(study.trials), todo)
        while todo > 0:
            trials = [study.ask(fixed_distributions=space) for _ in range(min(todo, self.n_jobs))]
            batch = [
                tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()) for trial in trials
            ]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns):
                value = self._value(ret)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            todo -= len(trials)
        self._write_results(study)

    @staticmethod
    def _value(ret: Any) -> float | None:
        try:
            value = ret.return_value  # raises the job's exception if it failed
        except Exception as err:
            log.error("trial failed: %s", err)
            return None
        if value is None:
            return None
        value = float(value)
        return None if math.isnan(value) else value

    def _write_results(self, study: Any) -> None:
        out = Path(str(self.config.hydra.sweep.dir))
        out.mkdir(parents=True, exist_ok=True)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        results = {
            "name": "fmlab_optuna",
            "study_name": study.study_name,
            "direction": self.direction,
            "n_trials": len(study.trials),
            "n_complete": len(complete),
            "best_params": dict(study.best_params) if complete else None,
            "best_value": float(study.best_value) if complete else None,
            "best_trial": study.best_trial.number if complete else None,
        }
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        log.info(
            "best %s (trial %s): %s",
            results["best_value"],
            results["best_trial"],
            results["best_params"],
        )
