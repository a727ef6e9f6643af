"""``python -m fmlab.data.spark [overrides]`` (also the script ``spark-submit`` runs)."""

from fmlab.data.spark import main

if __name__ == "__main__":
    main()
