#!/usr/bin/env bash
# gpu_check.sh — first-contact check of diskgraph's CUDA paths on one NVIDIA GPU (docs/gpu.md).
#
#     OUT=/some/dir bash tools/bench/gpu_check.sh          # from the repository root; OUT defaults to ./gpu-check-out
#     DEVICE=cpu bash tools/bench/gpu_check.sh             # the same end to end on a CPU machine, small graph
#
# Steps, each under `timeout` and inside a total budget (BUDGET_S, default 470 s), continuing when one fails:
#   env        nvidia-smi and torch.cuda facts                                   -> logs/env.json
#   install    the checkout with --no-deps, only the missing non-torch dependencies (from .whl/ when it holds
#              wheels: no network needed); torch, numpy, numba are pinned to what is installed
#   cuda-tests pytest -m "not slow" restricted to the tests that need CUDA (cuda marker or a skipif naming a GPU,
#              selected by tools/bench/cuda_select.py); per-test outcome and pass/skip counts -> logs/cuda-tests.json
#   gather     GB/s of gathered rows: GPU-resident index_select, UVA (registered host memory, index_select by the
#              GPU), pinned copy (CPU index_select into pinned memory + non_blocking copy); float32 and bfloat16
#   generate, sample, pack-gpu, pack-host, pack-cold: head_to_head.py's graph (2M nodes, 31M edges drawn, 128-d)
#              with every read row in the GPU tier / in the host tier / cold on disk (reused when already there)
#   train-gpu, train-host, train-cold: `diskgraph train --device $DEVICE` for EPOCHS epochs each, with
#              nvidia-smi sampling utilization (200 ms) and PCIe rx/tx (dmon -s t, 1 s) in the background
#   syncs      host syncs per training step (torch.cuda.set_sync_debug_mode("warn"), one epoch of the gpu pack)
#   summary    $OUT/summary.md (tables) and $OUT/summary.json; every log under $OUT/logs
# A step that cannot run here (no GPU, no nvidia-smi, budget spent) is recorded as skipped with the reason.
#
# Knobs (environment): OUT WORK PYTHON DEVICE (cuda) SCALE (full; small with DEVICE=cpu) BUDGET_S EPOCHS NODES
#   EDGES DIM FANOUTS BATCH SPLIT HIDDEN GATHER_ROWS GATHER_K SKIP_TESTS=1 KEEP_WORK=0 (delete the data after)
set -u -o pipefail

REPO=$(pwd)
if ! grep -q '^name = "diskgraph"' "$REPO/pyproject.toml" 2> /dev/null; then
  echo "gpu_check.sh: run me from the diskgraph repository root (no diskgraph pyproject.toml in $REPO)" >&2
  exit 2
fi
DEVICE=${DEVICE:-cuda}
if [[ "$DEVICE" == cuda* ]]; then SCALE=${SCALE:-full}; else SCALE=${SCALE:-small}; fi
case "$SCALE" in
  full)  # tools/bench/head_to_head.py's graph; a smaller val split keeps the cold pack at ~15 GB
    D_NODES=2000000 D_EDGES=31000000 D_DIM=128 D_FANOUTS=15,10 D_BATCH=1024 D_SPLIT=random:0.1,0.02,0.88
    D_HIDDEN=256 D_ROWS=1000000 D_K=100000 ;;
  small)
    D_NODES=20000 D_EDGES=300000 D_DIM=64 D_FANOUTS=10,5 D_BATCH=512 D_SPLIT=random:0.1,0.05,0.85
    D_HIDDEN=64 D_ROWS=100000 D_K=10000 ;;
  *) echo "gpu_check.sh: SCALE is full or small, not $SCALE" >&2; exit 2 ;;
esac
NODES=${NODES:-$D_NODES} EDGES=${EDGES:-$D_EDGES} DIM=${DIM:-$D_DIM} FANOUTS=${FANOUTS:-$D_FANOUTS}
BATCH=${BATCH:-$D_BATCH} SPLIT=${SPLIT:-$D_SPLIT} HIDDEN=${HIDDEN:-$D_HIDDEN}
GATHER_ROWS=${GATHER_ROWS:-$D_ROWS} GATHER_K=${GATHER_K:-$D_K}
EPOCHS=${EPOCHS:-2}
BUDGET_S=${BUDGET_S:-470}
RESERVE_S=${RESERVE_S:-15}          # kept for the summary
OUT=${OUT:-$REPO/gpu-check-out}
WORK=${WORK:-$REPO/.gpu-check-work}
PY=${PYTHON:-python3}
HELP="$REPO/tools/bench/gpu_check.py"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd) WORK=$(cd "$WORK" && pwd)
LOG=$OUT/logs
rm -rf "$LOG"; mkdir -p "$LOG"
rm -f "$OUT/summary.md" "$OUT/summary.json"
DATA=$WORK/syn-n$NODES-e$EDGES-f$DIM-s0
exec > >(tee "$LOG/gpu_check.log") 2>&1
TEE_PID=$!

left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
note() { echo "### $*"; }
skip() {  # skip NAME REASON
  note "STEP $1 SKIPPED: $2"
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$LOG/status.tsv"
}
declare -A STATUS=()
# step NAME CAP_S CMD... : CMD under timeout min(CAP_S, budget left - reserve), output in $LOG/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local rem=$(( $(left) - RESERVE_S ))
  if (( rem < 5 )); then skip "$name" "the ${BUDGET_S} s budget is spent"; STATUS[$name]=skipped; return 0; fi
  local t=$(( cap < rem ? cap : rem ))
  note "STEP $name BEGIN (timeout ${t} s; $(left) s of the budget left)"
  local s; s=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  local d=$(( $(date +%s) - s ))
  local extra=""; if (( rc == 124 || rc == 137 )); then extra=" TIMEOUT"; fi
  note "STEP $name END rc=$rc ${d} s$extra"
  tail -n 8 "$LOG/$name.log" | sed "s/^/    [$name] /"
  STATUS[$name]=$rc
  printf '%s\t%s\t%s\n' "$name" "$rc" "$d" >> "$LOG/status.tsv"
  return 0
}
ok() { [[ "${STATUS[$1]:-x}" == 0 ]]; }

HAVE_SMI=0; command -v nvidia-smi > /dev/null 2>&1 && HAVE_SMI=1
MON_PIDS=""
mon_start() {  # GPU utilisation every 200 ms and PCIe rx/tx every second while a step runs
  MON_PIDS=""
  (( HAVE_SMI )) || return 0
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
    --format=csv,noheader,nounits -lms 200 > "$LOG/smi-$1.csv" 2> /dev/null &
  MON_PIDS="$!"
  nvidia-smi dmon -s t -d 1 > "$LOG/dmon-$1.txt" 2> /dev/null &
  MON_PIDS="$MON_PIDS $!"
}
mon_stop() {
  local p
  for p in $MON_PIDS; do kill "$p" 2> /dev/null; wait "$p" 2> /dev/null; done
  MON_PIDS=""
}
trap mon_stop EXIT

cat > "$LOG/params.json" <<EOF
{"device": "$DEVICE", "scale": "$SCALE", "budget_s": $BUDGET_S, "epochs": $EPOCHS, "nodes": $NODES, "edges": $EDGES,
 "dim": $DIM, "fanouts": "$FANOUTS", "batch": $BATCH, "split": "$SPLIT", "hidden": $HIDDEN,
 "gather_rows": $GATHER_ROWS, "gather_k": $GATHER_K, "repo": "$REPO", "work": "$WORK", "out": "$OUT"}
EOF
note "gpu_check.sh in $REPO: DEVICE=$DEVICE SCALE=$SCALE OUT=$OUT WORK=$WORK budget ${BUDGET_S} s; $(date -u)"

# -- facts and install ----------------------------------------------------------------------------------------------
step env 60 bash -c 'if command -v nvidia-smi > /dev/null; then nvidia-smi; nvidia-smi -L; else echo "no nvidia-smi"; fi
  echo "cpus: $(nproc)"; free -g | head -2; df -h "$1" | tail -1; echo "ulimit -l: $(ulimit -l)"
  "$2" "$3" env "$4/env.json"' _ "$WORK" "$PY" "$HELP" "$LOG"
(( HAVE_SMI )) || note "no nvidia-smi: GPU utilisation and PCIe rates are not sampled"

step install 120 "$PY" "$HELP" install "$REPO" --wheels "$REPO/.whl" --shim "$WORK/shim" --pin-file "$WORK/pins.txt"
if [[ -d "$WORK/shim" && "${STATUS[install]}" != 0 ]]; then export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"; fi
PKG_OK=0
(cd / && timeout 120 "$PY" -c 'import diskgraph.cli, diskgraph.pipeline.uva; print("import ok:", diskgraph.__file__)') \
  && PKG_OK=1 || note "diskgraph is not importable: the steps that need it are skipped"
CUDA_OK=0
if [[ "$DEVICE" == cuda* ]]; then
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then CUDA_OK=1
  else note "WARNING: DEVICE=$DEVICE but torch sees no CUDA GPU"; fi
fi

# -- CUDA tests -------------------------------------------------------------------------------------------------------
if [[ "${SKIP_TESTS:-0}" == 1 ]]; then skip cuda-tests "SKIP_TESTS=1"
elif (( ! PKG_OK )); then skip cuda-tests "diskgraph is not importable"
else
  mapfile -t TEST_FILES < <(grep -rlE --include='test_*.py' 'needs an NVIDIA GPU|needs a CUDA GPU|mark\.cuda' tests | sort)
  echo "files holding CUDA tests: ${TEST_FILES[*]}"
  step cuda-tests 150 env PYTHONPATH="$REPO/tools/bench${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -rs \
    -m "not slow" -p cuda_select --cuda-report "$LOG/cuda-tests.json" -p no:cacheprovider "${TEST_FILES[@]}"
fi

# -- gather bandwidth -------------------------------------------------------------------------------------------------
if [[ "$DEVICE" == cuda* ]] && (( ! CUDA_OK )); then skip gather "DEVICE=$DEVICE but torch sees no CUDA GPU"
else
  mon_start gather
  step gather 90 "$PY" "$HELP" gather "$LOG/gather.json" --device "$DEVICE" --rows "$GATHER_ROWS" --dim "$DIM" \
    --k "$GATHER_K"
  mon_stop
fi

# -- data: generate (or reuse), sample, three packs ----------------------------------------------------------------------
GRAPH="$NODES nodes, $EDGES edges drawn, $DIM-d float32, fanouts $FANOUTS, batch $BATCH, split $SPLIT"
PARAMS="$NODES $EDGES $DIM $FANOUTS $BATCH $SPLIT"
REUSED=false
packed() { [[ -f "$DATA/packs/$1/manifest.json" && "$(cat "$DATA/.gpu-check-params" 2> /dev/null)" == "$PARAMS" ]]; }
if (( ! PKG_OK )); then skip generate "diskgraph is not importable"
elif [[ -f "$DATA/plans/bench/manifest.json" && "$(cat "$DATA/.gpu-check-params" 2> /dev/null)" == "$PARAMS" ]]; then
  note "reusing $DATA (generated earlier with the same parameters)"; REUSED=true
  STATUS[generate]=0 STATUS[sample]=0
else
  rm -rf "$DATA"
  step generate 150 "$PY" -m diskgraph generate --nodes "$NODES" --edges "$EDGES" --feature-dim "$DIM" --classes 16 \
    --seed 0 --split "$SPLIT" --out "$DATA" -q
  if ok generate; then
    step sample 90 "$PY" -m diskgraph preprocess sample "$DATA" --fanouts "$FANOUTS" --batch-size "$BATCH" --seed 0 \
      --splits train,val --name bench -q
  else skip sample "generate failed"; fi
  ok sample && echo "$PARAMS" > "$DATA/.gpu-check-params"
fi
pack() {  # pack NAME CAP [--gpu-cache 1T | --host-cache 1T]: every row the plan reads in that tier, or none
  local name=$1 cap=$2; shift 2
  if ! ok sample; then skip "pack-$name" "no plan (generate or sample failed)"; return; fi
  if packed "$name"; then note "reusing pack $name"; STATUS[pack-$name]=0; return; fi
  step "pack-$name" "$cap" "$PY" -m diskgraph preprocess pack "$DATA" --plan bench --name "$name" "$@" --overwrite
}
train() {  # train NAME CAP
  local name=$1 cap=$2
  if ! ok "pack-$name"; then skip "train-$name" "no pack $name"; return; fi
  if [[ "$DEVICE" == cuda* ]] && (( ! CUDA_OK )); then skip "train-$name" "DEVICE=$DEVICE but torch sees no CUDA GPU"; return; fi
  mon_start "train-$name"
  step "train-$name" "$cap" "$PY" -m diskgraph train "$DATA" --pack "$name" --model sage --hidden "$HIDDEN" \
    --epochs "$EPOCHS" --seed 0 --device "$DEVICE" --run-dir "$WORK/runs/$name" --overwrite \
    --log-json "$LOG/train-$name.jsonl" --step-log "$LOG/steps-$name.jsonl"
  mon_stop
}
# cheapest first: the GPU and host tiers, then the cold pack (the largest write) and its run
pack gpu 60 --gpu-cache 1T
pack host 60 --host-cache 1T
train gpu 90
train host 90
pack cold 150
train cold 150
if (( ! CUDA_OK )); then skip syncs "no CUDA device (DEVICE=$DEVICE): host syncs are a CUDA notion"
elif ! ok pack-gpu; then skip syncs "no pack gpu"
else step syncs 60 "$PY" "$HELP" syncs "$LOG/syncs.json" "$DATA" --pack gpu --hidden "$HIDDEN"; fi

SIZES=$(du -sh "$DATA" "$DATA"/packs/* 2> /dev/null | tr '\t\n' ' ;')
"$PY" - "$LOG" "$GRAPH" "$REUSED" "$SIZES" <<'PYEOF'
import json, sys
log, graph, reused, sizes = sys.argv[1:5]
times = {}
for line in open(f"{log}/status.tsv"):
    name, rc, secs, *_ = line.rstrip("\n").split("\t")
    if name in ("generate", "sample") or name.startswith("pack-"):
        times[name] = float(secs)
json.dump({"graph": graph, "reused": reused == "true", "times": times, "sizes": sizes}, open(f"{log}/data.json", "w"))
PYEOF

# -- summary ------------------------------------------------------------------------------------------------------------
note "STEP summary BEGIN"
timeout 60 "$PY" "$HELP" summarize "$LOG" "$OUT" > "$LOG/summary.log" 2>&1 || note "summary failed: see $LOG/summary.log"
cat "$OUT/summary.md" 2> /dev/null
if [[ "${KEEP_WORK:-1}" == 0 ]]; then rm -rf "$WORK"; else rm -rf "$WORK/runs" "$WORK/shim"; fi
note "DONE in $(( $(date +%s) - T0 )) s; results in $OUT (summary.md, summary.json, logs/)"
exec 1>&- 2>&-
wait "$TEE_PID" 2> /dev/null
[[ -f "$OUT/summary.json" ]]
