"""The data card: ``card.json`` (everything, machine-readable), ``card.md`` (the same for people)
and length histograms as PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmlab.data.splits import SPLITS

__all__ = ["card_markdown", "plot_lengths"]


def plot_lengths(lengths: dict[str, np.ndarray], out_dir: Path) -> dict[str, str]:
    """One PNG per length unit (``chars``, ``tokens``): a histogram per split, log-spaced bins.

    Args:
        lengths: ``{"<split>/<unit>": per-document lengths}``.
        out_dir: Dataset directory; plots go to ``plots/``.

    Returns:
        ``{unit: relative path}`` of the written plots.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe in worker processes
    import matplotlib.pyplot as plt

    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = {}
    for unit in ("chars", "tokens"):
        series = {s: lengths[f"{s}/{unit}"] for s in SPLITS if len(lengths.get(f"{s}/{unit}", []))}
        if not series:
            continue
        lo = max(1, min(int(v.min()) for v in series.values()))
        hi = max(int(v.max()) for v in series.values())
        bins = np.unique(np.geomspace(lo, max(hi, lo + 1) + 1, 40).astype(int))
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        for split, values in series.items():
            # weights 1/n: each split sums to 1, so splits of different sizes compare
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                weights=np.full(len(values), 1 / len(values)),
                label=f"{split} (n={len(values):,}, median={int(np.median(values)):,})",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"document length ({unit}, log scale)")
        ax.set_ylabel("share of documents")
        ax.set_title(f"Document lengths in {unit}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        rel = f"plots/length_{unit}.png"
        fig.savefig(out_dir / rel)
        plt.close(fig)
        written[unit] = rel
    return written


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _reasons(removed: dict[str, int]) -> str:
    items = [f"{k} {_fmt(v)}" for k, v in sorted(removed.items(), key=lambda kv: -kv[1]) if v]
    return ", ".join(items) or "-"


def card_markdown(card: dict[str, Any]) -> str:
    """Render ``card`` (the content of card.json) as Markdown."""
    out = [f"# Data card: {card['name']}", ""]
    out.append(
        f"Prepared by fmlab-prepare on {card['created']} · kind `{card['kind']}` · "
        f"segment `{card['segment']['mode']}` · fingerprint `{card['fingerprint']}`"
    )
    out += ["", "## Splits", "", "| split | documents | tokens | rows |", "|---|---:|---:|---:|"]
    for s in SPLITS:
        info = card["splits"].get(s, {})
        out.append(
            f"| {s} | {_fmt(info.get('documents', 0))} | {_fmt(info.get('tokens', '-'))} | "
            f"{_fmt(info.get('rows', '-'))} |"
        )
    out += ["", "## Stages", "", "| stage | in | out | removed (by reason) | changed | s |"]
    out.append("|---|---:|---:|---|---|---:|")
    for name, st in card["stages"].items():
        if name == "write":
            out.append(f"| write ({st['settings']['format']}) | | | | | {_fmt(st['seconds'])} |")
            continue
        if not st.get("enabled", True) and "in" not in st:
            out.append(f"| {name} | | | *off* | | |")
            continue
        changed = _reasons(st.get("changed", {})) if st.get("changed") else ""
        out.append(
            f"| {name} | {_fmt(st.get('in', 0))} | {_fmt(st.get('out', 0))} | "
            f"{_reasons(st.get('removed', {}))} | {changed} | {_fmt(st.get('seconds', 0.0))} |"
        )
    bad = card["stages"].get("structure", {}).get("examples", {})
    if bad:
        out += ["", "### Bad rows (first few per reason)", ""]
        for reason, items in bad.items():
            for item in items:
                out.append(f"- `{reason}` at `{item['where']}`: {item['detail']}")
    out += ["", "## Sources", "", "| source | files | MB | rows | kept | bad |"]
    out.append("|---|---:|---:|---:|---:|---|")
    for src in card["sources"]:
        out.append(
            f"| `{src['source']}` | {_fmt(src['files'] or '-')} | {src['bytes'] / 1e6:.2f} | "
            f"{_fmt(src['rows'])} | {_fmt(src['kept'])} | {_reasons(src['bad'])} |"
        )
    if card.get("split_sources"):  # which split came from which source (declared or hashed)
        out += ["", "## Splits by source", "", "| source | declared | " + " | ".join(SPLITS) + " |"]
        out.append("|---|---|" + "---:|" * len(SPLITS))
        for label, per in card["split_sources"].items():
            cells = " | ".join(_fmt(per.get(s, 0)) for s in SPLITS)
            out.append(f"| `{label}` | {per.get('declared') or 'hash split'} | {cells} |")
    out += ["", "## Domains", "", "| domain | " + " | ".join(SPLITS) + " |"]
    out.append("|---|" + "---:|" * len(SPLITS))
    for dom, per in sorted(card["domains"].items()):
        cells = [
            f"{_fmt(per.get(s, {}).get('documents', 0))} docs / "
            f"{_fmt(per.get(s, {}).get('tokens', 0))} tok"
            for s in SPLITS
        ]
        out.append(f"| {dom} | " + " | ".join(cells) + " |")
    dates = card["dates"]
    out += ["", "## Dates", ""]
    if dates.get("min"):
        out.append(
            f"{_fmt(dates['with_date'])} records dated from {dates['min']} to {dates['max']} "
            f"(data cutoff **{dates['cutoff']}**); {_fmt(dates['without_date'])} without a date."
        )
        spans = dates.get("by_split") or {}
        out += [f"- {s}: {spans[s]['min']} .. {spans[s]['max']}" for s in SPLITS if s in spans]
        window = card["stages"].get("filter", {}).get("dates")
        if window:
            out.append(
                f"- window: after {window['after'] or '-'} (exclusive), on or before "
                f"{window['before'] or '-'}; {_fmt(window['undated'])} undated record(s) "
                f"({window['undated_policy']})"
            )
        held = card["stages"].get("split", {}).get("dates")
        if held:
            test = f", test after {held['test_after']}" if held["test_after"] else ""
            out.append(f"- split by date: held out after {held['heldout_after']}{test}")
    else:
        out.append("No record carries a date (set `date_field` on a source to record one).")
    dup = card.get("duplicates")
    if dup:
        out += ["", "## Duplicate clusters", ""]
        out.append(
            f"{_fmt(dup['count'])} clusters (kept document + removed copies); sizes: "
            + ", ".join(f"{k}: {v}" for k, v in dup["size_histogram"].items())
        )
        if dup["largest"]:
            out += ["", "| kept | size | exact | near | min Jaccard | text |"]
            out.append("|---|---:|---:|---:|---:|---|")
            for c in dup["largest"]:
                snippet = c["snippet"][:80].replace("|", "\\|")
                out.append(
                    f"| `{c['kept']}` | {c['size']} | {c['exact']} | {c['near']} | "
                    f"{c['min_jaccard']} | {snippet} |"
                )
    dec = card["stages"].get("decontaminate", {})
    if dec.get("enabled") and "ngrams" in dec:
        out += ["", "## Decontamination", ""]
        out.append(
            f"Training records sharing a {dec['settings']['ngram']}-gram with: "
            + ", ".join(f"{o} ({_fmt(n)} n-grams)" for o, n in dec["ngrams"].items())
            + f". Removed: {_reasons(dec.get('removed', {}))}."
        )
    tok = card.get("tokenizer")
    if tok:
        out += [
            "",
            "## Tokenizer",
            "",
            f"`{tok['name']}`, vocabulary {_fmt(tok['vocab_size'])}, "
            f"EOS `{tok['eos_token']}` (saved in `tokenizer/`).",
        ]
    if card.get("histograms"):
        out += ["", "## Length histograms", ""]
        out += [f"![{unit}]({rel})" for unit, rel in card["histograms"].items()]
    out += ["", "## Settings", "", "```json"]
    import json

    out += [json.dumps(card["settings"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(out)
