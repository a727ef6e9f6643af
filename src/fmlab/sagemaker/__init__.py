"""``fmlab-sagemaker``: ``fmlab-train`` inside an Amazon SageMaker training job.

SageMaker describes a job with files under ``/opt/ml`` and ``SM_*`` environment variables. This
entry point turns them into Hydra overrides of ``fmlab-train`` and runs it in this process:

- hyperparameters (``SM_HPS``, ``input/config/hyperparameters.json``, or ``--key value`` on the
  command line) are overrides: ``trainer.max_steps: 100`` → ``trainer.max_steps=100``,
  ``experiment: sft_classify`` → ``experiment=sft_classify``; keys may carry Hydra's ``+``/``~``;
- channel ``train`` is the data: ``data.sources=[<dir>]`` (``data=files`` unless a data option or
  experiment is chosen), or ``data=prepared data.path=<dir>`` when it holds an fmlab-prepare output
  (``card.json``); channel ``model`` is the starting weights: ``model.name_or_path`` with
  ``model=pretrained``, else ``init_from``. Any other channel must be named in a hyperparameter
  value as ``${oc.env:SM_CHANNEL_<NAME>}``; a channel nothing uses is an error;
- the run directory is the checkpoint directory (``/opt/ml/checkpoints``, which SageMaker syncs
  with ``checkpoint_s3_uri``), so a restarted spot job finds its checkpoints and ``resume=auto``
  continues; ``<run>/export`` is copied to ``SM_MODEL_DIR`` (uploaded as ``model.tar.gz``) and the
  summary, config and metrics to ``SM_OUTPUT_DATA_DIR``; ``fmlab-metric <name>=<value>`` lines
  are printed for ``metric_definitions``;
- ``SM_HOSTS``/``SM_CURRENT_HOST``/``SM_NUM_GPUS`` → ``trainer.num_nodes``/``trainer.devices``
  (``trainer=gpu``/``ddp`` unless one is chosen) and ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``:
  SageMaker starts this command once per host and Lightning starts one process per GPU. Under
  ``torchrun`` the ranks come from torchrun and nothing is set.

Exit codes: 0 done; 1 the run failed; 2 the hyperparameters or channels do not form a valid
config (nothing ran); 143 SIGTERM (``last.ckpt`` written; a restart resumes). The reason for a
non-zero exit goes to ``/opt/ml/output/failure``, which SageMaker shows as the failure reason.
``FMLAB_SM_ROOT`` replaces ``/opt/ml`` and ``FMLAB_SM_CHECKPOINT_DIR`` the checkpoint directory
(as ``checkpoint_local_path``).
"""

from fmlab.sagemaker.env import SageMakerEnv
from fmlab.sagemaker.job import collect, main
from fmlab.sagemaker.overrides import (
    SageMakerError,
    hydra_value,
    hyperparameters_from_overrides,
    parse_cli,
)
from fmlab.sagemaker.plan import Plan, check_launch, make_plan, validate_plan

__all__ = [
    "Plan",
    "SageMakerEnv",
    "SageMakerError",
    "check_launch",
    "collect",
    "hydra_value",
    "hyperparameters_from_overrides",
    "main",
    "make_plan",
    "parse_cli",
    "validate_plan",
]
