#!/bin/bash
# Submit a nas search to Slurm: the array of workers (nas-search.sbatch) and, after it, the job that
# exports the best net and writes the report (nas-finish.sbatch). Settings in the environment (see
# nas-search.sbatch); the arguments go to the array's sbatch, e.g.:
#   NAS_STORAGE=postgresql://nas@db:5432/nas NAS_STUDY=fmnist NAS_TRIALS=200 NAS_SPACE=$PWD/space.yaml \
#   NAS_DATA_DIR=/shared/fashion-mnist NAS_OUT=$PWD/results deploy/slurm/submit.sh --array=0-7 --cpus-per-task=4
# Prints the two job ids: the array's, then the finishing job's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable "$@" "$here/nas-search.sbatch")
array=${array%%;*}
finish=$(sbatch --parsable --dependency="afterany:$array" "$here/nas-finish.sbatch")
echo "$array ${finish%%;*}"
