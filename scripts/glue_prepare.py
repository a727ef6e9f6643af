"""AWS Glue 5 job script: ``fmlab-prepare engine=spark`` with the overrides of a job parameter.

Glue 5.0 runs Spark 3.5 on Python 3.11. Job parameters (README "Data preparation on Spark"):

    --additional-python-modules  fmlab[spark]==0.1.0   (or s3://bucket/wheels/fmlab-...whl)
    --overrides  "'sources=[s3://bucket/raw/]' output_dir=s3://bucket/prepared/corpus
                  prepare/recipe=records"

Glue adds parameters of its own (``--JOB_NAME``, ``--TempDir``, ...); only ``--overrides`` is
read here. The logic is all in :func:`fmlab.data.spark.main`.
"""

from __future__ import annotations

import shlex
import sys

from fmlab.data.spark import main


def overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides in ``--overrides "<shell-quoted overrides>"``."""
    if "--overrides" not in argv[:-1]:
        raise SystemExit(
            "glue_prepare.py: set the job parameter --overrides, e.g. "
            "\"'sources=[s3://bucket/raw/]' output_dir=s3://bucket/prepared\""
        )
    return shlex.split(argv[argv.index("--overrides") + 1])


if __name__ == "__main__":
    main(overrides(sys.argv[1:]))
