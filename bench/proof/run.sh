#!/usr/bin/env bash
# The proof on real data, in label mode: the teacher labels messages drawn at random from a real
# training split (its human labels are thrown away unread), the filter and the student do the
# rest, and student and teacher are scored on the real test split. No human label is used for
# anything but the final scores.
#
# usage: bench/proof/run.sh snips|smp2017 [UNLABELLED] [TEACHER_TEST]
#   UNLABELLED    messages to label (default 1328 for snips, 500 for smp2017, seed 1)
#   TEACHER_TEST  test messages the teacher also labels (default 700 for snips, its whole test
#                 split; 200 for smp2017; seed 1); the student is scored on the whole test
#                 split as well
# DATA names the folder that holds snips/ and smp2017_ecdt_task1/ (each with train, test and,
# for smp2017, validation JSONL); results go to bench/out/proof/<set>/; BIN names the prompt2lora
# binary. bench/proof/summary.py prints the tables afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:?set DATA to the folder that holds snips/ and smp2017_ecdt_task1/}
BIN=${BIN:-target/release/prompt2lora}
set_name=$1
case "$set_name" in
  snips) task=examples/snips.toml; dir=$DATA/snips; pool=("$dir/train.jsonl"); n=${2:-1328}; t=${3:-700} ;;
  smp2017) task=examples/smp2017.toml; dir=$DATA/smp2017_ecdt_task1
    pool=("$dir/train.jsonl" "$dir/validation.jsonl"); n=${2:-500}; t=${3:-200} ;;
  *) echo "unknown set $set_name" >&2; exit 2 ;;
esac
out=bench/out/proof/$set_name
mkdir -p "$out"
cat "${pool[@]}" >"$out/pool.jsonl"
python3 bench/proof/sample.py unlabelled "$out/pool.jsonl" "$n" 1 "$out/unlabelled.txt"
python3 bench/proof/sample.py labelled "$dir/test.jsonl" "$t" 1 "$out/test-teacher.jsonl"

# Label (resumable), filter, train, and score on the real test split.
"$BIN" generate "$task" --label "$out/unlabelled.txt" --out "$out/samples.jsonl"
"$BIN" filter "$out/samples.jsonl" --task "$task" --out "$out/clean.jsonl"
"$BIN" train "$out/clean.jsonl" --task "$task" --out "$out/adapter"
"$BIN" eval "$out/adapter" --data "$dir/test.jsonl" --task "$task" --out "$out/eval-full"
"$BIN" eval "$out/adapter" --data "$out/test-teacher.jsonl" --task "$task" --teacher \
  --out "$out/eval-teacher"

# Ablations: filter stages and rank rules, each scored on the whole test split.
ablate() {
  local name=$1 data=$2; shift 2
  "$BIN" train "$data" --task "$task" --out "$out/ablation/$name" "$@" >/dev/null 2>&1
  "$BIN" eval "$out/ablation/$name" --data "$dir/test.jsonl" --task "$task" \
    --out "$out/ablation/$name-eval" >/dev/null
  python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['student']; \
    print(sys.argv[2], round(m['macro_f1'], 4), round(m['accuracy'], 4))" \
    "$out/ablation/$name-eval/metrics.json" "$name"
}
"$BIN" filter "$out/samples.jsonl" --task "$task" --out "$out/clean-nocut.jsonl" \
  --rejects "$out/rejects-nocut.jsonl" --report "$out/filter-nocut.json" --keep-fraction 1.0
ablate no-filter "$out/samples.jsonl"
ablate no-confidence-cut "$out/clean-nocut.jsonl"
for rank in 4 8 32 sweep; do ablate "rank-$rank" "$out/clean.jsonl" --rank "$rank"; done
# The swept student against the teacher on the same messages (the teacher's labels are reused).
mkdir -p "$out/eval-teacher-sweep"
cp "$out/eval-teacher/teacher_labels.jsonl" "$out/eval-teacher-sweep/"
"$BIN" eval "$out/ablation/rank-sweep" --data "$out/test-teacher.jsonl" --task "$task" --teacher \
  --out "$out/eval-teacher-sweep" >/dev/null
python3 bench/proof/summary.py "$set_name" "${pool[@]}"
