#!/usr/bin/env bash
# The device report: what a machine with an accelerator says about this package, in one file (about 8 minutes
# on one NVIDIA GPU with the real checkpoint). Sections: `verify --attention all` (float32 and bfloat16 against
# the golden vectors), the encode benchmark against sentence-transformers in bfloat16 with MFU, the training
# benchmark against sentence-transformers' trainer in bfloat16, and compile time (layers scanned vs unrolled).
#
#   MODEL=~/models/embeddinggemma-300m bash scripts/device_report.sh [REPORT.md]      # GPU, H100/H200 peak
#   DEVICE=cpu SIZE=tiny REFERENCE=sentence-transformers MODEL=DIR bash scripts/device_report.sh out.md
#
# DEVICE gpu|cpu, PEAK_TFLOPS (default 989: H100/H200 dense bfloat16), SIZE full|tiny (tiny: the smoke test
# CI runs, each section as small as it gets: verify of one backend and dtype, the compile table's encode rows),
# REFERENCE golden|sentence-transformers (golden needs the official checkpoint). A failing section is reported
# and the rest still runs; the exit status is that of the first failure.
set -uo pipefail
MODEL=${MODEL:-${EMBEDDINGGEMMA_CHECKPOINT:?set MODEL to a checkpoint directory}}
REPORT=${1:-device-report.md}
DEVICE=${DEVICE:-gpu}
SIZE=${SIZE:-full}
REFERENCE=${REFERENCE:-golden}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
if [ "$SIZE" = tiny ]; then  # each section once, as little as it can do: the smoke test CI runs
  VERIFY=(--attention dense --dtype float32); ENCODE=(--scale 1 --repeats 1 --only short)
  TRAIN=(--steps 4 --batch-size 8); COMPILE=(--programs encode)
else
  VERIFY=(--attention all --dtype float32,bfloat16); ENCODE=(--scale 16 --short-batch 256 --long-batch 32)
  TRAIN=(--steps 12 --batch-size 64); COMPILE=()
fi
status=0
section() {  # section TITLE COMMAND...: a Markdown heading, the command, its output, its exit status
  echo; echo "## $1"; shift
  echo; echo '```text'; echo "\$ $*"
  "$@" 2>&1 | grep -v -e '^WARNING: All log messages before absl' -e '^I0000 ' ; local rc=${PIPESTATUS[0]}
  echo '```'; echo "exit status $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
{
  echo "# Device report, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo; echo "model \`$MODEL\`, device $DEVICE, size $SIZE"
  if command -v nvidia-smi > /dev/null; then
    echo; echo '```text'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo '```'
  fi
  section "verify" embeddinggemma verify --model "$MODEL" "${VERIFY[@]}" --reference "$REFERENCE"
  section "encode vs sentence-transformers, bfloat16" embeddinggemma benchmark --model "$MODEL" --device "$DEVICE" \
    --dtype bfloat16 --peak-tflops "$PEAK_TFLOPS" "${ENCODE[@]}"
  section "training vs sentence-transformers' trainer, bfloat16" embeddinggemma benchmark-train --model "$MODEL" \
    --device "$DEVICE" --dtype bfloat16 "${TRAIN[@]}"
  section "compile time, layers scanned vs unrolled" embeddinggemma benchmark-compile --model "$MODEL" "${COMPILE[@]}"
} > >(tee "$REPORT")
wait
exit $status
