"""Documentation that cannot drift from the code.

- The site builds with ``mkdocs build --strict`` (broken links, anchors and references fail), and
  its generated reference lists every config group and option of ``conf/``.
- Every shell block marked ``<!-- fmlab: run -->`` in the get-started, tutorial and how-to pages
  runs, at tiny scale, in page order (the convention is in docs/contributing.md).
- Every ``summary.json`` written by those commands has only fields that the reference documents.
- Every relative link of README.md resolves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNABLE_DIRS = ("get-started", "tutorials", "how-to")

MARKER = re.compile(r"^<!-- fmlab: run(?P<extra>[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?:bash|sh|shell)\s*$")

# Appended to the fmlab commands of a runnable block: tiny scale (later overrides win in Hydra).
SCALE_TRAIN = [
    "debug=fast",
    "++trainer.max_steps=4",
    "++trainer.val_check_interval=4",
    "++trainer.limit_val_batches=2",
    "++trainer.limit_test_batches=2",
    "++callbacks.checkpoint_last.every_n_train_steps=4",
]
SCALE_EVAL = ["++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"]
SHIMS = {
    "fmlab-train": ("fmlab.train", [*SCALE_TRAIN, "$FMLAB_DOCS_EXTRA"]),
    "fmlab-eval": ("fmlab.eval", SCALE_EVAL),
    "fmlab-generate": ("fmlab.generate", ["max_new_tokens=4"]),
    "fmlab-prepare": ("fmlab.prepare", []),
    "fmlab-predict": ("fmlab.predict", []),
    "fmlab-report": ("fmlab.report", [f"--eval-override={o}" for o in SCALE_EVAL]),
}


def runnable_blocks(page: Path) -> list[tuple[str, str]]:
    """``(extra fmlab-train overrides, script)`` of every marked block, in page order.

    A marker must be followed directly by a bash fence; anything else is an error, so a marker
    can never silently stop running its block.
    """
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise AssertionError(f"{page}:{i + 1}: '<!-- fmlab: run -->' not followed by ```bash")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks.append((m["extra"].strip(), "\n".join(lines[i + 2 : end])))
    return blocks


def _pages_with_blocks() -> list[Path]:
    pages = sorted(p for d in RUNNABLE_DIRS for p in (DOCS / d).rglob("*.md"))
    return [p for p in pages if runnable_blocks(p)]


def _write_shims(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, (module, extra) in SHIMS.items():
        args = " ".join(extra)
        script = f'#!/usr/bin/env bash\nexec "{sys.executable}" -m {module} "$@" {args}\n'
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)


def _documented_summary_fields() -> set[str]:
    return set(re.findall(r"`([^`]+)`", (DOCS / "reference" / "summary.md").read_text()))


def _undocumented(summary: dict, documented: set[str]) -> list[str]:
    missing = []
    for key in summary:
        prefix = key.split("/", 1)[0] + "/…" if "/" in key else None
        if key not in documented and prefix not in documented:
            missing.append(key)
    return missing


# ------------------------------------------------------------------ the site
def test_site_builds_strict_with_generated_reference(tmp_path):
    if shutil.which("mkdocs") is None and not _has_module("mkdocs"):
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (part of .[dev])")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the generated reference: every group of conf/ and every option in it
    for group_dir in sorted(p for p in (ROOT / "conf").rglob("*") if p.is_dir()):
        options = sorted(group_dir.glob("*.yaml"))
        if not options:
            continue
        group = group_dir.relative_to(ROOT / "conf").as_posix()
        page = site / "reference" / "config" / group.replace("/", "-") / "index.html"
        html = page.read_text()
        for option in options:
            assert f'id="{option.stem}"' in html, f"{page}: option {option.stem} missing"
    entry = (site / "reference" / "entry-points" / "index.html").read_text()
    assert "fmlab-train" in entry and "max_steps" in entry
    assert (site / "reference" / "api" / "fmlab.train" / "index.html").is_file()
    assert (site / "tutorials" / "notebooks" / "quickstart" / "index.html").is_file()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ------------------------------------------------------------------ runnable blocks
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few tiny runs per page; generous for a loaded 2-core CI machine
@pytest.mark.parametrize("page", _pages_with_blocks(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_runnable_blocks(page: Path, tmp_path: Path, cache_dir: Path):
    scratch = tmp_path / "work"
    scratch.mkdir()
    _write_shims(tmp_path / "bin")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
        + os.environ.get("PATH", ""),
        "FMLAB_LOG_DIR": str(scratch / "logs"),
        "FMLAB_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    env.pop("FMLAB_BASE_MODEL", None)
    for n, (extra, script) in enumerate(runnable_blocks(page), 1):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=scratch,
            env={**env, "FMLAB_DOCS_EXTRA": extra},
            capture_output=True,
            text=True,
            timeout=1500,
        )
        where = f"{page.relative_to(ROOT)}, runnable block {n}:\n{script}\n"
        assert proc.returncode == 0, where + (proc.stdout + proc.stderr)[-5000:]
    documented = _documented_summary_fields()
    for path in (scratch / "logs").rglob("summary.json"):
        if not (path.parent / "checkpoints").is_dir():
            continue  # fmlab-train's summaries only (fmlab-eval's and fmlab-prepare's differ)
        missing = _undocumented(json.loads(path.read_text()), documented)
        assert not missing, f"{path}: fields not in docs/reference/summary.md: {missing}"


def test_runnable_markers_are_well_formed():
    pages = _pages_with_blocks()
    assert pages, "no runnable blocks found in the docs"
    assert any(p.name == "quickstart.md" for p in pages)


# ------------------------------------------------------------------ README
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(md: Path) -> set[str]:
    """GitHub/MkDocs-style heading slugs of a Markdown file (and explicit ``{#id}`` anchors)."""
    out = set()
    for line in md.read_text().splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)$", line):
            head = m.group(1)
            if ids := re.findall(r"\{#([^}]+)\}", head):
                out.update(ids)
                continue
            slug = re.sub(r"[^\w\- ]", "", head.lower().replace("`", "")).strip()
            out.add(re.sub(r"[ ]+", "-", slug))
    return out


def test_readme_links_resolve():
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= 150, "README.md is the front door: at most 150 lines"
    links = [a or b for a, b in LINK.findall(text)]
    assert links, "README.md has no links"
    bad = []
    for link in links:
        if re.match(r"^[a-z]+://|^mailto:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (readme.parent / path).resolve() if path else readme
        if not target.exists():
            bad.append(f"{link}: {target} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            bad.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not bad, "\n".join(bad)
