"""``python -m fmlab.sagemaker``."""

from fmlab.sagemaker.job import main

main()
