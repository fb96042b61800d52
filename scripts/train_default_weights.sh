#!/usr/bin/env bash
# Train the committed default weights on the synthetic corpus, exactly as docs/models.md says.
# Each stage is skipped when its checkpoint exists; an interrupted stage continues from its
# resumable state under runs/ when this script is run again. Wall times go to weights/TIMES.
set -euo pipefail
cd "$(dirname "$0")/.."
DT=.venv/bin/dreamtalk
DATA=${DATA:-data/synth}
mkdir -p weights
[ -f "$DATA/manifest.json" ] || $DT data synth --out "$DATA" --hours 10 --workers 2

stage() {  # stage NAME OUTPUT COMMAND...
    local name=$1 out=$2; shift 2
    [ -f "$out" ] && { echo "$name: $out exists, skipped"; return; }
    local start=$SECONDS resume=()
    [ -d "runs/$(basename "$out" .pt)" ] && resume=(--resume)
    "$@" "${resume[@]}"
    echo "$name: $((SECONDS - start)) s" | tee -a weights/TIMES
}

stage emodiff weights/emodiff.pt \
    $DT train emodiff --data "$DATA" --out weights/emodiff.pt --steps 36000 --threads 2
stage distill weights/emodiff_student.pt \
    $DT distill --teacher weights/emodiff.pt --steps 4 --out weights/emodiff_student.pt \
    --guided-steps 3000 --round-steps 3000 --threads 2
stage lips weights/lips.pt \
    $DT train lips --emodiff weights/emodiff_student.pt --data "$DATA" \
    --out weights/lips.pt --steps 36000 --lr 1e-3 --threads 2
stage lstm weights/lstm.pt \
    $DT train lstm --data "$DATA" --out weights/lstm.pt --steps 12000 --threads 2
