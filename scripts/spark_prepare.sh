#!/usr/bin/env bash
# fmlab-prepare on Spark through spark-submit (README "Data preparation on Spark").
# Arguments before "--" go to spark-submit, the ones after it are fmlab-prepare overrides.
#   local:    bash scripts/spark_prepare.sh --master 'local[4]' -- \
#               'sources=[data/raw/]' output_dir=data/prepared prepare/recipe=records
#   EMR step: bash spark_prepare.sh --master yarn --deploy-mode cluster -- \
#               'sources=[s3://bucket/raw/]' output_dir=s3://bucket/prepared/c4 prepare/recipe=records
#             (fmlab installed on every node by a bootstrap action: pip install 'fmlab[spark]')
# Environment: PYTHON (interpreter with fmlab, default python3), SPARK_SUBMIT (default
# spark-submit: the cluster's, or the one pip installs with pyspark).
set -euo pipefail
PY=${PYTHON:-python3}
submit=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do submit+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
# the job script is the engine's own entry point (python -m fmlab.data.spark)
entry=$("$PY" -c 'import fmlab.data.spark.__main__ as m; print(m.__file__)')
master=""
for ((i = 0; i < ${#submit[@]}; i++)); do
  [ "${submit[$i]}" = "--master" ] && master=${submit[$((i + 1))]:-}
done
if [ -z "$master" ] || [[ "$master" == local* ]]; then
  # local mode: Python workers must run this interpreter (its venv has fmlab), not `python3`
  py_exe=$("$PY" -c 'import sys; print(sys.executable)')
  export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$py_exe}
  export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$py_exe}
fi
exec "${SPARK_SUBMIT:-spark-submit}" --name fmlab-prepare ${submit[@]+"${submit[@]}"} "$entry" "$@"
