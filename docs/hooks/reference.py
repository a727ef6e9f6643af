"""MkDocs hook: pages generated at build time, so the reference cannot drift from the code.

- ``reference/entry-points.md``: every console script of ``pyproject.toml`` with its module
  docstring, and for the Hydra entry points their primary config (``conf/<name>.yaml``, with its
  comments) and defaults list; plus the ``scripts/`` helpers with their docstrings.
- ``reference/config/index.md`` and ``reference/config/<group>.md``: every config group under
  ``conf/``, each choice with its header comment, its ``_target_`` and the whole file.
- ``reference/api/index.md`` and ``reference/api/<module>.md``: one mkdocstrings page per public
  module of ``fmlab`` (the docstrings, read statically by griffe).

Everything is read from files (``ast``, ``yaml``); nothing of fmlab is imported.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml
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


def _target(path: Path, group: str) -> str:
    """The ``_target_`` an option builds: at its top, or under its group's key (``@package
    _global_`` files such as ``method``)."""
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    if not isinstance(node, dict):
        return ""
    inner = node.get(group.split("/")[-1])
    if "_target_" not in node and isinstance(inner, dict):
        node = inner
    return str(node.get("_target_", ""))


def _describe(header: str) -> list[str]:
    """A header comment as Markdown: prose as a paragraph, indented usage lines as a code block."""
    prose = [line for line in header.splitlines() if line and not line.startswith(" ")]
    usage = [line.strip() for line in header.splitlines() if line.startswith(" ")]
    out = [" ".join(prose), ""] if prose else []
    if usage:
        out += ["```bash", *usage, "```", ""]
    return out


def _group_page(group: str, options: list[Path], root: Path) -> str:
    global_ = any("# @package _global_" in p.read_text() for p in options)
    values = (
        "its options set keys anywhere in the config (`@package _global_`)"
        if global_
        else f"set a value with `{group.split('/')[0]}.<key>=<value>`"
    )
    out = [
        f"# `{group}`",
        "",
        f"The config group `conf/{group}/`, generated when the site is built. Choose an option "
        f"with `{group}=<option>`; {values} "
        "(see [the config tree](../../concepts/config-tree.md)).",
        "",
        "| option | what it is | builds |",
        "|---|---|---|",
    ]
    for path in options:
        target = _target(path, group)
        out.append(
            f"| [`{path.stem}`](#{path.stem}) | {_cell(_first_sentence(_header(path)))} "
            f"| {'`' + target + '`' if target else ''} |"
        )
    for path in options:
        out += ["", f"## `{path.stem}` {{#{path.stem}}}", ""]
        out += _describe(_header(path))
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


def _doc_markdown(doc: str, indent: int = 4) -> list[str]:
    """A docstring as Markdown: reST literals and roles as code; lines indented by ``indent``
    that start a paragraph (or, with ``indent=2``, any such line: shell headers) as code."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", doc).replace("``", "`")
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []
    for line in [*doc.splitlines(), ""]:
        if line.startswith(" " * indent) and (not prose or indent == 2):
            if prose:
                out += [" ".join(prose), ""]
                prose = []
            code.append(line.strip())
            continue
        if code:
            out += ["```bash", *code, "```", ""]
            code = []
        if re.match(r"^(\d+\.|-) ", line) and prose:  # a list item starts a new paragraph
            out += [" ".join(prose), ""]
            prose = []
        if line.strip():
            prose.append(line.strip())
        elif prose:
            out += [" ".join(prose), ""]
            prose = []
    return out


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
        out += _doc_markdown(_docstring(_module_file(root / "src", module)))
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
                shown = "null" if choice == "None" else choice
                out.append(f"| {link} | `{shown}` | {names} |")
            out.append("")
        out.append(_yaml_block(path, root, f"conf/{conf}.yaml: every option, with its comment"))
    out += ["", "## Scripts", "", "Helpers in `scripts/` (run from a checkout).", ""]
    for path in sorted((root / "scripts").iterdir()):
        if path.suffix == ".py":
            text = _doc_markdown(_docstring(path) or "(no description)")
        elif path.suffix in (".sh", ".sbatch"):
            text = _doc_markdown(_header_sh(path) or "(no description)", indent=2)
        else:
            continue
        out += [f"### `scripts/{path.name}`", "", *text]
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
