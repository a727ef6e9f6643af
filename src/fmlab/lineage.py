"""Model lineage: every model reference resolved once, to a place and a content fingerprint.

A reference a user writes (``model.name_or_path``, ``init_from``, the base of an adapter or ReFT
export) may be relative, a symlink such as ``logs/train/latest`` that moves with every run, or a
Hub name. :func:`resolve_model_ref` turns it, once at start-up, into a :class:`ModelRef`: the
absolute location with symlinks resolved, its kind, a fingerprint of its content and the fmlab run
it came from. That resolved reference is what runs record (``config.yaml``, ``summary.json``, the
model card, ``adapter_config.json``, ``reft_config.json``); a later load compares fingerprints and
refuses a different model under the same name (:func:`check_fingerprint`).

Fingerprints (:func:`fingerprint`): ``xxh3:<32 hex>`` over ``config.json`` (minus the fields that
name where or with what it was written) and the full content of every weight file, so a toy run of
the same architecture differs; file digests are cached by (path, size, mtime_ns) under
``<FMLAB_CACHE_DIR>/fingerprints`` so resolving a large model again costs a few ``stat`` calls.
Hub models: ``hub:<name>@<commit>`` when the commit is known (a pinned revision or the local Hub
cache), else ``hub:<name>@<revision> (unpinned)``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fmlab.config import ConfigError

__all__ = [
    "ModelRef",
    "check_fingerprint",
    "check_resumed",
    "default_cache_dir",
    "find_run_dir",
    "fingerprint",
    "is_hub_name",
    "pin_config",
    "resolve_model_ref",
]

Kind = Literal["local", "hub", "checkpoint"]

# Files whose content is the model (top level of a model/adapter directory).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# config.json fields that say where or by which library version it was written, not what it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelRef:
    """A model reference resolved once: what was given and what it pointed at then.

    Attributes:
        given: What the user wrote (e.g. ``logs/train/latest/export``).
        path: Absolute location with symlinks resolved, or the Hub name.
        kind: ``local`` (an HF model directory), ``hub`` (a Hub name) or ``checkpoint`` (a
            Lightning ``.ckpt`` of an fmlab run).
        fingerprint: Content hash (see :func:`fingerprint`).
        run_id: The fmlab run it comes from (run directory name), else None.
        run_dir: That run directory (absolute), when it still exists here.
        revision: Hub revision (commit when known); None for local models.
    """

    given: str
    path: str
    kind: Kind
    fingerprint: str
    run_id: str | None = None
    run_dir: str | None = None
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON/YAML records (``summary.json``, model cards, ``config.yaml``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRef:
        """Inverse of :meth:`to_dict` (unknown keys ignored, so older/newer records load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def describe(self) -> str:
        """One line for logs and errors: ``path (fingerprint, run <id>)``."""
        run = f", run {self.run_id}" if self.run_id else ""
        return f"{self.path} ({self.fingerprint}{run})"


def default_cache_dir() -> Path:
    """The fmlab cache directory (``FMLAB_CACHE_DIR``, as ``conf/paths/default.yaml``)."""
    base = os.environ.get("FMLAB_CACHE_DIR")
    return Path(base) if base else Path(os.environ.get("HOME", ".")) / ".cache" / "fmlab"


def _file_digest(path: Path, cache: Path | None) -> str:
    """xxh3-128 of a file's bytes, cached by (absolute path, size, mtime_ns)."""
    import xxhash

    st = path.stat()
    key = xxhash.xxh3_64_hexdigest(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    entry = cache / key[:2] / key if cache else None
    if entry is not None and entry.is_file():
        return entry.read_text().strip()
    h = xxhash.xxh3_128()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(digest)
            os.replace(tmp, entry)
        except OSError:  # a read-only cache only costs the re-hash next time
            pass
    return digest


def _config_digest(path: Path) -> str:
    import xxhash

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return xxhash.xxh3_128_hexdigest(path.read_bytes())
    for key in _VOLATILE_CONFIG_KEYS:
        data.pop(key, None)
    return xxhash.xxh3_128_hexdigest(json.dumps(data, sort_keys=True).encode())


def fingerprint(path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """Content fingerprint of a model directory or a single weights file (e.g. a ``.ckpt``).

    A directory's fingerprint covers ``config.json`` (without ``_name_or_path`` and
    ``transformers_version``) and the bytes of every top-level weight file (``*.safetensors``,
    ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) by name; copying the directory elsewhere keeps it,
    retraining (any weight change) or another architecture changes it.

    Args:
        path: The directory or file.
        cache_dir: fmlab cache directory (default: ``FMLAB_CACHE_DIR``); file digests are kept
            under ``<cache_dir>/fingerprints``.

    Raises:
        ConfigError: ``path`` does not exist or holds neither config nor weights.
    """
    import xxhash

    p = Path(path).expanduser()
    cache = Path(cache_dir or default_cache_dir()) / "fingerprints"
    if p.is_file():
        return f"xxh3:{_file_digest(p, cache)}"
    if not p.is_dir():
        raise ConfigError(f"fingerprint: no such file or directory: {p}")
    parts = []
    if (p / "config.json").is_file():
        parts.append(f"config.json={_config_digest(p / 'config.json')}")
    weights = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    parts += [f"{f.name}={_file_digest(f, cache)}" for f in weights]
    if not parts:
        raise ConfigError(f"fingerprint: {p} holds no config.json and no weight file")
    return "xxh3:" + xxhash.xxh3_128_hexdigest("\n".join(parts).encode())


def find_run_dir(path: str | Path) -> Path | None:
    """The fmlab run directory holding ``path`` (itself or up to three levels up), if any.

    A run directory has the run's ``config.yaml`` beside ``export/``, ``checkpoints/`` or
    ``summary.json``.
    """
    p = Path(path).resolve()
    for cand in [p, *list(p.parents)[:3]]:
        if (cand / "config.yaml").is_file() and any(
            (cand / n).exists() for n in ("export", "checkpoints", "summary.json")
        ):
            return cand
    return None


def _recorded_run_id(model_dir: Path) -> str | None:
    """The run id an fmlab export recorded in its card (it stays true after the export moved)."""
    card = model_dir / "fmlab_card.json"
    try:
        data = json.loads(card.read_text()) if card.is_file() else {}
    except (OSError, ValueError):
        return None
    return data.get("run_id") or None


def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit of ``name@revision``: the revision itself if it is one, else the local Hub
    cache's ref (no network)."""
    if revision and _COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def is_hub_name(value: str) -> bool:
    """Whether ``value`` reads as a Hub model name (``name`` or ``org/name``) rather than a local
    path: no leading ``.``/``/``/``~``, at most one ``/``, and no first part that is a local
    directory (``logs/export`` with ``logs/`` here is a missing local path)."""
    raw = Path(value).expanduser()
    return not (
        value.startswith((".", "/", "~"))
        or value.endswith(".ckpt")
        or not _HUB_NAME.match(value)
        or "--" in value
        or ".." in value
        or (len(raw.parts) > 1 and Path(raw.parts[0]).is_dir())
    )


def _missing(key: str, value: str | None, where: Path | None, hint: str | None) -> ConfigError:
    at = "not set" if value is None else f"no model at {value}"
    if where is not None and str(where) != value:
        at += f" ({where})"
    fix = hint or (
        f"run `fmlab-train` first (its summary names export_dir) and set {key}=<that directory>, "
        "or set FMLAB_BASE_MODEL for the presets"
    )
    return ConfigError(f"{key}: {at}; {fix}")


def _model_dir(path: Path) -> Path | None:
    """The HF model directory that ``path`` stands for: itself, or an fmlab run's / export's
    full model (``export/merged`` for adapters, ``export`` for full training)."""
    for sub in ("", "export/merged", "export", "merged"):
        cand = path / sub if sub else path
        if (cand / "config.json").is_file():
            return cand
    return None


def resolve_model_ref(
    value: str | os.PathLike | None,
    key: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    hint: str | None = None,
    allow_checkpoint: bool = False,
) -> ModelRef:
    """Resolve what the user wrote for ``key`` into a :class:`ModelRef` (call once, at start).

    Recognised, in order: a ``.ckpt`` file (only with ``allow_checkpoint``; its run's
    ``config.yaml`` and ``tokenizer/`` are required); an HF model directory (``config.json``); an
    fmlab run directory or its ``export/`` (``export/merged`` for adapters, else ``export``, else
    ``checkpoints/last.ckpt`` with ``allow_checkpoint``); a Hub name (``org/name``).

    Args:
        value: What the user wrote.
        key: The config key it came from, named in every error (e.g. ``model.name_or_path``).
        revision: Hub revision (branch, tag or commit) for Hub names.
        cache_dir: fmlab cache directory for fingerprint digests.
        hint: The fix to suggest when there is no model (default: run ``fmlab-train`` or set it).
        allow_checkpoint: Whether a Lightning checkpoint may stand for the model (``init_from``).

    Raises:
        ConfigError: Nothing given, a path with no model, a checkpoint without its run, or a
            value that is neither an existing path nor a valid Hub name.
    """
    given = "" if value is None else str(value).strip()
    if not given or given.startswith("???"):  # a preset's '??? <how to make one>' or bare ???
        raise _missing(key, None, None, given[3:].strip() or hint)
    raw = Path(given).expanduser()
    path = raw.resolve()
    if path.is_file():
        if not (allow_checkpoint and path.suffix == ".ckpt"):
            raise ConfigError(f"{key}={given}: a file, not a model directory ({path})")
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        if not (run / "config.yaml").is_file() or not (run / "tokenizer").is_dir():
            raise ConfigError(
                f"{key}={given}: a checkpoint needs its run's config.yaml and tokenizer/ "
                f"(looked in {run})"
            )
        fp = fingerprint(path, cache_dir=cache_dir)
        return ModelRef(given, str(path), "checkpoint", fp, run.name, str(run))
    if path.is_dir():
        model_dir = _model_dir(path)
        if model_dir is None:
            last = path / "checkpoints" / "last.ckpt"
            if allow_checkpoint and last.is_file():
                ref = resolve_model_ref(last, key, cache_dir=cache_dir, allow_checkpoint=True)
                return ModelRef(given, ref.path, ref.kind, ref.fingerprint, ref.run_id, ref.run_dir)
            if (path / "export" / "reft").is_dir() or (path / "reft_config.json").is_file():
                raise ConfigError(
                    f"{key}={given}: a ReFT export holds interventions, not a model; use its "
                    "base model (recorded in reft_config.json: base_model) or load it with "
                    "fmlab-generate/fmlab-eval model_path=..."
                )
            raise _missing(
                key,
                given,
                path,
                "expected config.json, an fmlab run's export/ or checkpoints/last.ckpt there",
            )
        run = find_run_dir(model_dir)
        run_id = run.name if run else _recorded_run_id(model_dir)
        fp = fingerprint(model_dir, cache_dir=cache_dir)
        return ModelRef(given, str(model_dir), "local", fp, run_id, str(run) if run else None)
    # Not on disk: a Hub name, or a local path that is missing.
    if not is_hub_name(given):
        raise _missing(key, given, path, hint)
    commit = _hub_commit(given, revision)
    pin = commit or f"{revision or 'main'} (unpinned)"
    return ModelRef(given, given, "hub", f"hub:{given}@{pin}", revision=commit or revision)


def check_fingerprint(
    recorded: ModelRef | dict[str, Any] | None,
    actual: ModelRef,
    *,
    what: str,
    allow_mismatch: bool = False,
) -> str | None:
    """Refuse ``actual`` when its fingerprint differs from the one ``recorded`` at training.

    Args:
        recorded: The base reference an export recorded (None: nothing to compare, e.g. an export
            written before fingerprints existed).
        actual: The base about to be loaded.
        what: What is being loaded, for the message (e.g. ``adapter /x/export/adapter``).
        allow_mismatch: Load anyway (the caller records that it did).

    Returns:
        None when they agree (or nothing was recorded), else a one-line description of the
        mismatch (only with ``allow_mismatch``).

    Raises:
        ConfigError: Fingerprints differ and ``allow_mismatch`` is false.
    """
    if recorded is None:
        return None
    rec = ModelRef.from_dict(recorded) if isinstance(recorded, dict) else recorded
    if not rec.fingerprint or rec.fingerprint == actual.fingerprint:
        return None
    msg = (
        f"{what} was trained on base {rec.path} with fingerprint {rec.fingerprint}, but the base "
        f"found at {actual.path} has fingerprint {actual.fingerprint}"
    )
    if allow_mismatch:
        return msg
    raise ConfigError(
        f"{msg}; point base_model=<the original base> at the right model, or set "
        "allow_base_mismatch=true to load it anyway (recorded in the summary)"
    )


def pin_config(cfg: Any) -> dict[str, ModelRef]:
    """Resolve the model references of a train config once and write them back, pinned.

    ``init_from`` and ``model.name_or_path`` (when the model node has one) become absolute,
    symlink-free locations (a Hub model also gets ``model.revision`` = its commit when known), and
    ``cfg.lineage`` records each :class:`ModelRef` as a dict, so ``config.yaml`` says what the run
    really started from. Runs before anything is read.

    Returns:
        The references by role: ``init_from`` and/or ``model``.

    Raises:
        ConfigError: A reference that is missing or holds no model (the key is named).
    """
    from omegaconf import DictConfig, OmegaConf, open_dict

    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)
    log_dir = OmegaConf.select(cfg, "paths.log_dir", default="logs")

    def hint(key: str) -> str:
        return (
            f"run `fmlab-train` first (it prints `export: <dir>`, under {log_dir}/train/runs/) "
            f"and set FMLAB_BASE_MODEL=<dir> or {key}=<dir>"
        )

    refs: dict[str, ModelRef] = {}
    if cfg.get("init_from"):
        refs["init_from"] = resolve_model_ref(
            cfg.init_from,
            "init_from",
            cache_dir=cache_dir,
            allow_checkpoint=True,
            hint=hint("init_from"),
        )
    model = cfg.get("model")
    if "init_from" not in refs and isinstance(model, DictConfig) and "name_or_path" in model:
        value = None if OmegaConf.is_missing(model, "name_or_path") else model.get("name_or_path")
        refs["model"] = resolve_model_ref(
            value,
            "model.name_or_path",
            revision=model.get("revision"),
            cache_dir=cache_dir,
            hint=hint("model.name_or_path"),
        )
    with open_dict(cfg):
        if "init_from" in refs:
            cfg.init_from = refs["init_from"].path
        if "model" in refs:
            cfg.model.name_or_path = refs["model"].path
            if refs["model"].kind == "hub" and refs["model"].revision:
                cfg.model.revision = refs["model"].revision
        cfg.lineage = {role: ref.to_dict() for role, ref in refs.items()} or None
    return refs


def check_resumed(config_yaml: str | Path, refs: dict[str, ModelRef]) -> None:
    """A run directory restarted (resume, requeue) must start from the same models as before.

    Args:
        config_yaml: The run directory's ``config.yaml`` from its first start (absent: nothing
            to compare).
        refs: The references resolved now (:func:`pin_config`).

    Raises:
        ConfigError: A reference now resolves to other content than the run first recorded.
    """
    path = Path(config_yaml)
    if not path.is_file():
        return
    from omegaconf import OmegaConf

    before = OmegaConf.to_container(OmegaConf.load(path)).get("lineage") or {}
    for role, ref in refs.items():
        first = ModelRef.from_dict(before[role]) if role in before else None
        if first is not None and first.fingerprint and first.fingerprint != ref.fingerprint:
            key = "init_from" if role == "init_from" else "model.name_or_path"
            raise ConfigError(
                f"{key}: the run in {path.parent} started from {first.path} (fingerprint "
                f"{first.fingerprint}) but {ref.given} is now {ref.path} (fingerprint "
                f"{ref.fingerprint}); resume with the original model or start a new run directory"
            )
