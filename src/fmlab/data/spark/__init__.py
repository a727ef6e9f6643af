"""Data preparation on Spark: ``fmlab-prepare engine=spark`` (locally, on EMR, on Glue).

The stages structure → clean → filter → dedup → split → decontaminate run as one Spark job that
calls fmlab's own row functions, so the kept records and their splits are those of the
single-machine pipeline on the same input and settings; the output is Parquet per split that
fmlab training reads. pyspark is imported only when the engine runs (``pip install
'fmlab[spark]'``).
"""

from fmlab.data.spark.job import prepare_on_spark
from fmlab.data.spark.session import SparkSettings

__all__ = ["SparkSettings", "main", "prepare_on_spark"]


def main(overrides: list[str] | None = None) -> None:
    """``python -m fmlab.data.spark [overrides]``: ``fmlab-prepare engine=spark [overrides]``.

    Args:
        overrides: Hydra overrides (default: the command line's).
    """
    import sys

    from fmlab.prepare import main as prepare_main

    args = sys.argv[1:] if overrides is None else list(overrides)
    sys.argv = [sys.argv[0] or "fmlab-prepare", "engine=spark", *args]
    prepare_main()
