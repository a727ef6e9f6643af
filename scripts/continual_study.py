"""The continued pre-training study (docs/results/continual.md): English → code, forgetting.

Pre-trains the tiny Llama on the embedded English corpus (or takes ``--base``), continues it on the
code corpus with each variant (replay share, KL, L2-SP) once per seed, then writes ``results.json``,
``table.md`` (mean ± std over seeds) and ``forgetting.png`` (domain gain vs. retention loss), plus
``schedules.png``. Finished runs are reused, so an interrupted study continues where it stopped.

    python scripts/continual_study.py --out docs/continual --seeds 1 2 3   # ~1 h on 2 cores
    python scripts/continual_study.py --base <run dir> --variants replay0=data.replay=0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmlab.evaluation.continual_study import run_variants, write_study
from fmlab.evaluation.seeds import train_once
from fmlab.modules.schedules import constant_factor, cosine_factor, wsd_factor

VARIANTS = {
    "replay 0%": ["data.replay=0"],
    "replay 5%": ["data.replay=0.05"],
    "replay 0% + KL": ["data.replay=0", "module.kl=1.0"],
    "replay 5% + KL": ["data.replay=0.05", "module.kl=1.0"],
}


def plot_schedules(path: Path, total: int = 200, warmup: int = 20) -> None:
    """LR factor of cosine (re-warm + re-decay), WSD and constant over a continued run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(total + 1)
    curves = {
        "cosine (re-warm + re-decay)": [
            cosine_factor(s, total_steps=total, warmup_steps=warmup, min_lr_ratio=0.1)
            for s in steps
        ],
        "warmup-stable-decay (20% anneal)": [
            wsd_factor(
                s, total_steps=total, warmup_steps=warmup, decay_steps=total // 5, min_lr_ratio=0.0
            )
            for s in steps
        ],
        "constant": [constant_factor(s, warmup_steps=warmup) for s in steps],
    }
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, ys in curves.items():
        ax.plot(list(steps), ys, label=label)
    ax.set(xlabel="step", ylabel="LR / peak", title="scheduler=cosine | wsd | constant")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/continual"))
    parser.add_argument("--runs", type=Path, default=Path("logs/continual_study"))
    parser.add_argument("--base", help="an existing base run (default: pre-train one)")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="*", help="label=override,override ...")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every continued run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plot_schedules(args.out / "schedules.png")
    base = args.base
    if base is None:
        base = str(args.runs / "base")
        train_once(Path(base), ["experiment=pretrain_tiny", f"trainer.max_steps={args.base_steps}"])
    variants = VARIANTS
    if args.variants:
        variants = dict(v.split("=", 1) for v in args.variants)
        variants = {k: v.split(",") for k, v in variants.items()}
    reports = run_variants(base, args.runs, variants, args.seeds, overrides=args.overrides)
    meta = {"base": base, "seeds": args.seeds, "variants": variants, "overrides": args.overrides}
    print(write_study(reports, args.out, meta))


if __name__ == "__main__":
    main()
