"""Per-task inference with a multi-task export: ``fmlab-predict`` and :func:`load_multitask`.

A multi-task run exports its backbone like any run (``export/``, ``export/adapter/`` or
``export/reft/``) and its heads beside it in ``export/heads/`` (``heads.safetensors`` and
``tasks.json`` with each task's kind, labels, pooling and template).

    from fmlab.predict import load_multitask
    mt = load_multitask("logs/multitask/latest")
    mt.predict("topic", ["the team scored a goal"])  # [{"label": "sports", "probs": {...}}]
    mt.predict("logic", ["true and false"])         # [{"text": "false"}]

    fmlab-predict model_path=logs/multitask/latest head=topic 'inputs=["the coach ..."]'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# torch and the model code are imported where they are used: --help stays fast (see train.py)
from fmlab.cli import hydra_main
from fmlab.config import ConfigError
from fmlab.utils import atomic_write_text, write_json

if TYPE_CHECKING:
    import torch

    from fmlab.models.heads import TaskHead
    from fmlab.tasks.spec import TaskSpec

__all__ = ["MultiTask", "load_multitask", "main", "predict"]


def _heads_dir(path: Path) -> Path:
    from fmlab.modules.multitask import HEADS_DIR

    for candidate in (path / HEADS_DIR, path / "export" / HEADS_DIR, path.parent / HEADS_DIR):
        if (candidate / "tasks.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no {HEADS_DIR}/tasks.json here, in export/ or beside it; is this the export "
        "of a multi-task run (data=multitask)?"
    )


class MultiTask:
    """A trained backbone with its task heads; :meth:`predict` runs one task."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        specs: dict[str, TaskSpec],
        heads: dict[str, TaskHead],
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.specs, self.heads = specs, {n: h.eval() for n, h in heads.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def predict(
        self,
        task: str,
        inputs: list[str],
        *,
        batch_size: int = 32,
        max_new_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Predictions for raw ``inputs`` (the task's template is applied).

        Returns one dict per input: ``{"text"}`` (generative), ``{"label", "index", "probs"}``
        (classification) or ``{"value"}`` (regression).

        Raises:
            KeyError: ``task`` is not one of the export's tasks.
        """
        import torch

        with torch.no_grad():
            return self._predict(task, inputs, batch_size, max_new_tokens)

    def _predict(
        self, task: str, inputs: list[str], batch_size: int, max_new_tokens: int | None
    ) -> list[dict[str, Any]]:
        import torch

        from fmlab.data.multitask_encode import collate_task
        from fmlab.data.sft import encode_prompt
        from fmlab.evaluation.generation import generate_text
        from fmlab.models.heads import final_hidden

        if task not in self.specs:
            raise KeyError(f"task {task!r}: this export has {self.tasks}")
        spec = self.specs[task]
        template = spec.template.replace("{input}", "{prompt}")
        ids = [encode_prompt(x, self.tokenizer, template=template) for x in inputs]
        if spec.kind == "generative":
            texts = generate_text(
                self.model,
                self.tokenizer,
                ids,
                max_new_tokens=max_new_tokens or spec.max_new_tokens,
                batch_size=batch_size,
            )
            return [{"text": t.strip()} for t in texts]
        out: list[dict[str, Any]] = []
        dummy = 0 if spec.kind == "classification" else 0.0
        device = next(self.model.parameters()).device
        head = self.heads[task].to(device)  # once, not per batch
        for start in range(0, len(ids), batch_size):
            rows = [{"input_ids": i, "target": dummy} for i in ids[start : start + batch_size]]
            batch = collate_task(spec, 0, rows, self.tokenizer.pad_token_id, "right")
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            pred = head(final_hidden(self.model, batch), batch["attention_mask"])
            if spec.kind == "regression":
                out += [{"value": float(v)} for v in pred.cpu()]
                continue
            probs = pred.softmax(-1).cpu()
            labels = spec.labels or []
            for p in probs:
                k = int(p.argmax())
                out.append(
                    {
                        "label": labels[k],
                        "index": k,
                        "probs": {lab: float(q) for lab, q in zip(labels, p)},
                    }
                )
        return out


def load_multitask(
    path: str | Path,
    *,
    base: str | None = None,
    dtype: str = "float32",
    allow_base_mismatch: bool = False,
    lineage: dict[str, Any] | None = None,
) -> MultiTask:
    """Load a multi-task export (a run dir, its ``export/``, or an adapter/ReFT dir inside);
    ``base``/``allow_base_mismatch``/``lineage`` as :func:`fmlab.methods.adapters.load_trained`."""
    from safetensors.torch import load_file

    from fmlab.methods.adapters import load_trained
    from fmlab.models.heads import TaskHead
    from fmlab.tasks.spec import TaskSpec

    p = Path(path)
    heads_dir = _heads_dir(p)
    model, tokenizer = load_trained(
        p, base=base, dtype=dtype, allow_base_mismatch=allow_base_mismatch, lineage=lineage
    )
    meta = json.loads((heads_dir / "tasks.json").read_text())
    specs = {n: TaskSpec.model_validate(s) for n, s in meta["tasks"].items()}
    state = load_file(str(heads_dir / "heads.safetensors"))
    heads: dict[str, TaskHead] = {}
    for name, spec in specs.items():
        if spec.kind == "generative":
            continue
        head = TaskHead(int(meta["hidden_size"]), spec.num_outputs, spec.pooling, spec.head_dropout)
        own = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{name}.")}
        head.load_state_dict(own, strict=True)  # a missing or misshapen head is an error
        heads[name] = head
    return MultiTask(model, tokenizer, specs, heads)


class PredictSchema(BaseModel):
    """Keys of ``conf/predict.yaml``."""

    model_config = ConfigDict(extra="forbid")
    task_name: str
    paths: dict[str, Any]
    model_path: str
    base_model: str | None = None
    allow_base_mismatch: bool = False
    head: str
    inputs: list[str]
    inputs_file: str | None = None
    batch_size: Annotated[int, Field(gt=0)]
    max_new_tokens: Annotated[int, Field(gt=0)] | None = None


def predict(cfg: DictConfig, lineage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Predict the task ``cfg.head`` for every input; returns ``[{"input", ...prediction}]``
    (``lineage``: filled with the base an adapter/ReFT export was loaded onto)."""
    plain = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    try:
        opts = PredictSchema.model_validate(plain)
    except ValidationError as err:
        raise ConfigError(f"invalid predict config: {err}") from err
    inputs = list(opts.inputs)
    if opts.inputs_file:
        inputs += [ln for ln in Path(opts.inputs_file).read_text().splitlines() if ln.strip()]
    if not inputs:
        raise ConfigError("fmlab-predict: give inputs=[...] or inputs_file=<file>")
    mt = load_multitask(
        opts.model_path,
        base=opts.base_model,
        allow_base_mismatch=opts.allow_base_mismatch,
        lineage=lineage,
    )
    if opts.head not in mt.specs:
        raise ConfigError(f"head={opts.head}: the model at {opts.model_path} has tasks {mt.tasks}")
    preds = mt.predict(
        opts.head, inputs, batch_size=opts.batch_size, max_new_tokens=opts.max_new_tokens
    )
    return [{"input": x, **p} for x, p in zip(inputs, preds)]


@hydra_main("predict")
def main(cfg: DictConfig) -> None:
    """Console entry point: writes ``predictions.jsonl`` into the run directory, prints a table."""
    from rich.console import Console
    from rich.table import Table

    lineage: dict[str, Any] = {}
    rows = predict(cfg, lineage)
    out = Path(cfg.paths.output_dir)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / "summary.json", {"model_path": cfg.model_path, "lineage": lineage})
    table = Table("input", "prediction", title=f"{cfg.head} ({out / 'predictions.jsonl'})")
    for r in rows:
        shown = r.get("text", r.get("label", r.get("value")))
        table.add_row(r["input"], str(shown))
    Console().print(table)


if __name__ == "__main__":
    main()
