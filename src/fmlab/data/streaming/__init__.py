"""Streaming pre-training data: token blocks in litdata's chunk format, read from object storage
with a bounded local cache (``data=streaming``), written by ``fmlab-prepare
output_format=streaming`` on one machine or on Spark, and mixed with other corpora
(``data=mixture``). litdata is imported only when a stream is built (``pip install
'fmlab[streaming]'``).
"""

from fmlab.data.streaming.datamodule import StreamingDataModule

__all__ = ["StreamingDataModule"]
