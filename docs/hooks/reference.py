"""MkDocs hook: pages generated at build time, so the reference cannot drift from the code.

- ``reference/entry-points.md``: every console script of ``pyproject.toml`` with its module
  docstring, and for the Hydra entry points their primary config (``conf/<name>.yaml``, with its
  comments) and defaults list; plus the ``scripts/`` helpers with their docstrings.
- ``reference/config/index.md`` and ``reference/config/<group>.md``: every config group under
  ``conf/``, each choice with its header comment, its ``_target_`` and the whole file.
- ``reference/api/index.md`` and ``reference/api/<module>.md``: one mkdocstrings page per public
  module of ``fmlab`` (the docstrings, read statically by griffe).
- ``tutorials/notebooks/*.ipynb``: the notebooks of ``notebooks/``, rendered by mkdocs-jupyter
  without executing them (they are stored without outputs; the test suite executes them).

Everything is read from files (``ast``, ``yaml``); nothing of fmlab is imported.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

if sys.version_info >= (3, 11):
    import tomllib
else:  # the docs extra installs tomli there
    import tomli as tomllib

PRIMARY = ("train", "eval", "prepare", "generate", "predict")  # conf/<name>.yaml entry points


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _header(path: Path) -> str:
    """The leading comment block of a YAML file, without ``# @package`` lines."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# @package"):
            continue
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def _first_sentence(text: str) -> str:
    prose = " ".join(line for line in text.splitlines() if not line.startswith("  "))
    head = prose.split(". ")[0].strip()
    return (head.rstrip(".:") + ".") if head else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _yaml_block(path: Path, root: Path, title: str | None = None, open_: bool = False) -> str:
    rel = path.relative_to(root).as_posix()
    text = path.read_text().rstrip()
    kind = "???+" if open_ else "???"
    body = "\n".join(f"    {line}" if line else "" for line in ["```yaml", *text.splitlines()])
    return f'{kind} note "{title or rel}"\n\n{body}\n    ```\n'


def _groups(conf: Path) -> dict[str, list[Path]]:
    """Config group (``data``, ``prepare/recipe``, ...) → its option files."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        if path.parent != conf:
            groups.setdefault(path.parent.relative_to(conf).as_posix(), []).append(path)
    return groups


def _target(path: Path) -> str:
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    return str(node.get("_target_", "")) if isinstance(node, dict) else ""


def _group_page(group: str, options: list[Path], root: Path) -> str:
    out = [
        f"# Config group `{group}`",
        "",
        f"Generated from `conf/{group}/` when the site is built. Choose an option with "
        f"`{group}=<option>`; set a value with `{group.split('/')[0]}.<key>=<value>` "
        "(see [the config tree](../../concepts/config-tree.md)).",
        "",
        "| option | what it is | builds |",
        "|---|---|---|",
    ]
    for path in options:
        target = _target(path)
        out.append(
            f"| [`{path.stem}`](#{path.stem}) | {_cell(_first_sentence(_header(path)))} "
            f"| {'`' + target + '`' if target else ''} |"
        )
    for path in options:
        out += ["", f"## `{path.stem}` {{#{path.stem}}}", ""]
        header = _header(path)
        if header:
            out += ["```text", header, "```", ""]
        out.append(_yaml_block(path, root))
    return "\n".join(out) + "\n"


def _config_index(groups: dict[str, list[Path]]) -> str:
    out = [
        "# Config groups",
        "",
        "Generated from `conf/` when the site is built: every group, its options, and what each "
        "option builds. A group is a folder of `conf/`; an option is a YAML file in it.",
        "",
        "| group | options |",
        "|---|---|",
    ]
    for group, options in groups.items():
        links = ", ".join(f"[`{p.stem}`]({_slug(group)}.md#{p.stem})" for p in options)
        out.append(f"| [`{group}`]({_slug(group)}.md) | {links} |")
    return "\n".join(out) + "\n"


def _slug(group: str) -> str:
    return group.replace("/", "-")


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _module_file(src: Path, module: str) -> Path:
    path = src.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _defaults(path: Path) -> list[tuple[str, str]]:
    node = yaml.safe_load(path.read_text()) or {}
    pairs = []
    for item in node.get("defaults", []):
        if isinstance(item, dict):
            ((group, choice),) = item.items()
            pairs.append((str(group), str(choice)))
    return pairs


def _entry_points(root: Path, groups: dict[str, list[Path]]) -> str:
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    out = [
        "# Entry points",
        "",
        "Generated when the site is built from `pyproject.toml` (`[project.scripts]`), the "
        "modules' docstrings and `conf/`. The Hydra entry points take `key=value` overrides of "
        "their primary config below, `group=option` choices of the config groups it lists, and "
        "Hydra's own flags (`-m` for a sweep, `--cfg job` to print the composed config).",
        "",
        "| command | module | config |",
        "|---|---|---|",
    ]
    for name, target in scripts.items():
        module = target.split(":")[0]
        conf = module.rsplit(".", 1)[-1]
        cfg = f"`conf/{conf}.yaml`" if conf in PRIMARY else "command-line arguments"
        out.append(f"| [`{name}`](#{name}) | `{module}` | {cfg} |")
    for name, target in scripts.items():
        module = target.split(":")[0]
        conf = module.rsplit(".", 1)[-1]
        out += ["", f"## `{name}` {{#{name}}}", ""]
        doc = _docstring(_module_file(root / "src", module))
        out += ["```text", doc, "```", ""] if doc else []
        if conf not in PRIMARY:
            continue
        path = root / "conf" / f"{conf}.yaml"
        rows = [(g, c) for g, c in _defaults(path) if g != "_self_" and "@" not in g]
        if rows:
            out += ["| config group | default | options |", "|---|---|---|"]
            for group, choice in rows:
                group = group.removeprefix("override ").strip()
                options = groups.get(group, [])
                link = f"[`{group}`](config/{_slug(group)}.md)" if options else f"`{group}`"
                names = ", ".join(f"`{p.stem}`" for p in options)
                out.append(f"| {link} | `{choice}` | {names} |")
            out.append("")
        out.append(_yaml_block(path, root, f"conf/{conf}.yaml: every option, with its comment"))
    out += ["", "## Scripts", "", "Helpers in `scripts/` (run from a checkout).", ""]
    for path in sorted((root / "scripts").iterdir()):
        if path.suffix == ".py":
            doc = _docstring(path)
        elif path.suffix in (".sh", ".sbatch"):
            doc = _header_sh(path)
        else:
            continue
        out += [f"### `scripts/{path.name}`", "", "```text", doc or "(no description)", "```", ""]
    return "\n".join(out) + "\n"


def _header_sh(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        if not line.startswith("#SBATCH"):
            lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def _api_modules(src: Path) -> list[str]:
    """Public modules: fmlab's subpackages and top-level modules that define ``__all__``."""
    mods = []
    for path in sorted((src / "fmlab").iterdir()):
        if path.name.startswith("_"):
            continue
        file = path / "__init__.py" if path.is_dir() else path
        if file.suffix != ".py" or not file.is_file():
            continue
        tree = ast.parse(file.read_text())
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)}  # fmt: skip
        if "__all__" in names:
            mods.append(f"fmlab.{path.stem}")
    return mods


def _api_pages(src: Path) -> dict[str, str]:
    mods = _api_modules(src)
    index = [
        "# API",
        "",
        "Generated from the docstrings when the site is built (mkdocstrings). Each page shows a "
        "module's public names (`__all__`). The entry points are also plain functions: "
        "`fmlab.train.train(cfg)` with a config from `fmlab.config.compose_config`.",
        "",
        "| module | what it holds |",
        "|---|---|",
    ]
    pages = {}
    for mod in mods:
        doc = _docstring(_module_file(src, mod)).split("\n\n")[0].replace("\n", " ")
        index.append(f"| [`{mod}`]({mod}.md) | {_cell(doc)} |")
        pages[f"reference/api/{mod}.md"] = f"# `{mod}`\n\n::: {mod}\n"
    pages["reference/api/index.md"] = "\n".join(index) + "\n"
    return pages


@event_priority(50)  # before mkdocs-jupyter, which converts the notebooks added here
def on_files(files: Files, config) -> Files:
    root = _root(config)
    groups = _groups(root / "conf")
    pages = {
        "reference/entry-points.md": _entry_points(root, groups),
        "reference/config/index.md": _config_index(groups),
        **{
            f"reference/config/{_slug(g)}.md": _group_page(g, opts, root)
            for g, opts in groups.items()
        },
        **_api_pages(root / "src"),
    }
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        uri = f"tutorials/notebooks/{nb.name}"
        files.append(File.generated(config, uri, abs_src_path=str(nb)))
    return files


def on_config(config):
    """Put the generated group and API pages into the nav, under their index pages."""
    root = _root(config)
    expand = {
        "reference/config/index.md": (
            "Config groups",
            [f"reference/config/{_slug(g)}.md" for g in _groups(root / "conf")],
        ),
        "reference/api/index.md": (
            "API",
            [f"reference/api/{m}.md" for m in _api_modules(root / "src")],
        ),
    }
    for section in config.nav or []:
        if isinstance(section, dict) and "Reference" in section:
            section["Reference"] = [
                {expand[p][0]: [p, *expand[p][1]]} if p in expand else p
                for p in section["Reference"]
            ]
    return config
