"""pyspark's Python worker daemon with fmlab's pipeline imported first
(``spark.python.daemon.module``, set by ``spark.preload``).

Spark forks one Python worker per task slot from this daemon, so what is imported here is
imported once per executor instead of once per worker. That matters: ``fmlab.data`` (the parent
package, imported before this module runs) brings the training DataModules with Lightning and
torch along, ~6 s of import time per process on this project's CI machine.
"""

from pyspark import daemon

import fmlab.data.pipeline
import fmlab.data.spark.dedup
import fmlab.data.spark.stages
import fmlab.data.spark.structure  # noqa: F401  (the stage functions the workers call)

__all__: list[str] = []

if __name__ == "__main__":
    daemon.manager()
