"""fmlab's Optuna sweeper for Hydra (``hydra/sweeper=fmlab_optuna``); see :mod:`.optuna_sweeper`."""
