#!/usr/bin/env bash
# The GPU check (issue 34): one prepared script for one call of at most 10 minutes on a machine with CUDA.
#
#   bash tools/gpu_wheels.sh            # here, once: the packages the GPU image lacks, as wheels in .whl/
#   bash tools/gpu_check.sh             # there (carry .whl): writes $OUT/gpu_report.json and gpu_report.md
#   python tools/gpu_report.py --readme benchmarks/results/gpu_report.json   # here: the README's GPU table
#
# Steps, each under its own time budget (seconds; the sum stays under 560 so one 600 s call holds it all):
#   tests    the CUDA tests and the windowed-engine exactness tests on the GPU (float32, TF32 off; bf16 in test_ism)
#   bench    bench_ism.py --device cuda: unseen BPNet-like, full-size DeepSEA, the book's model and the wild ones,
#            16 x 1 kb, 5 members; deepmr (loop and vmap), naive, tangermeme (shipped, forced fast path, plain)
#   chapters every chapter at quick on the GPU, claims included (the chapter fails if a claim does)
#   paper    the simulation study at paper scale, one round, under what time is left (the time per round is the number)
#   cli      deepmr effects with --workers 1 on LocalCUDACluster, and with --device cpu (CPU workers on a GPU machine)
#
# GPU_CHECK_DRY=1 runs every step on the CPU at toy sizes: it tests this script, not the GPU.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-_build/gpu_check}
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-}
mkdir -p "$OUT"
: >"$OUT/steps.jsonl"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
DEVICE=cuda
[ -n "$DRY" ] && DEVICE=cpu

step() {  # step NAME BUDGET COMMAND...: run under a time limit, log its status and wall time
    local name=$1 budget=$2
    shift 2
    local t0=$SECONDS
    timeout "$budget" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d, "budget": %d}\n' "$name" "$rc" "$((SECONDS - t0))" "$budget" \
        >>"$OUT/steps.jsonl"
    echo "$name: rc $rc in $((SECONDS - t0)) s (budget $budget s)"
}

$PY - >"$OUT/env.json" <<'EOF'
import json, os, platform, torch
gpu = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)",
                  "memory_gib": round(gpu.total_memory / 2**30, 1) if gpu else None,
                  "cpus": os.cpu_count(), "date": __import__("time").strftime("%Y-%m-%d")}))
EOF

if [ -n "$DRY" ]; then
    step tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_windowed.py -k "wild or dense" \
        --junitxml "$OUT/tests.xml"
    step bench 200 $PY benchmarks/bench_ism.py --device cpu --models chrombpnet --n-seqs 1 --members 2 \
        --length 600 --methods deepmr,naive,tangermeme-forced --json "$OUT/bench.json"
    CHAPTERS="book/00_method.ipynb"
else
    step tests 90 env DEEPMR_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_windowed.py \
        tests/test_ism.py --junitxml "$OUT/tests.xml"
    step bench 220 $PY benchmarks/bench_ism.py --device cuda --models unseen-bpnet,deepsea,book,basset,chrombpnet \
        --n-seqs 16 --members 5 --batch-size 1024 \
        --methods deepmr,deepmr-vmap,naive,tangermeme,tangermeme-forced,tangermeme-slow --json "$OUT/bench.json"
    CHAPTERS="book/00_method.ipynb book/01_simulation.ipynb book/02_bpnet.ipynb book/03_deepsea.ipynb book/04_challenges.ipynb"
fi

for nb in $CHAPTERS; do
    name=chapter_$(basename "$nb" .ipynb)
    step "$name" 60 env DEEPMR_SCALE=quick DEEPMR_RESULTS="$OUT/results" $PY tools/run_notebook.py "$nb" \
        "/tmp/$(basename "$nb")"
done

left=$((540 - SECONDS))
if [ "$left" -gt 30 ]; then
    scale=paper
    [ -n "$DRY" ] && scale=quick
    step paper "$left" $PY tools/run_study.py --scale "$scale" --rounds 1 --scenarios none --n-jobs 1 \
        --out /tmp/study_paper --summary /tmp/study_paper.csv --rounds-file /tmp/study_paper_rounds.csv
fi

$PY - "$OUT" "$DEVICE" <<'EOF'
import sys
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, "tests")
import cli_models  # the tests' small model
out, device = Path(sys.argv[1]), sys.argv[2]
d = Path("/tmp/gpu_cli"); d.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
(d / "s.fa").write_text("".join(f">s{i}\n{''.join(rng.choice(list('ACGT'), 60))}\n" for i in range(8)))
for k in (1, 2):
    torch.manual_seed(k)
    torch.jit.save(torch.jit.script(cli_models.factory().eval()), d / f"m{k}.pt")
EOF
step cli_cuda_workers 60 $PY -m deepmr_utils.cli effects --model /tmp/gpu_cli/m1.pt --model /tmp/gpu_cli/m2.pt \
    --sequences /tmp/gpu_cli/s.fa --out /tmp/gpu_cli/run_gpu --workers 1 --device "$DEVICE" --quiet
step cli_cpu_workers 60 $PY -m deepmr_utils.cli effects --model /tmp/gpu_cli/m1.pt --model /tmp/gpu_cli/m2.pt \
    --sequences /tmp/gpu_cli/s.fa --out /tmp/gpu_cli/run_cpu --workers 2 --device cpu --quiet

$PY tools/gpu_report.py --collect "$OUT"
echo "total $SECONDS s; report: $OUT/gpu_report.json, $OUT/gpu_report.md"
