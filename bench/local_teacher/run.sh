#!/usr/bin/env bash
# Local-teacher benchmark: candle (this crate) against llama.cpp on the same GGUF file and
# thread counts. Usage: bench/local_teacher/run.sh MODEL.gguf [THREADS...]
# llama.cpp comes from `pip install llama-cpp-python` in the Python on PATH (or $PYTHON).
set -euo pipefail
model=$1
shift
threads=("${@:-1 2}")
python=${PYTHON:-python3}
# PROFILE=dev reuses the test build (dependencies are optimised in every profile).
profile=${PROFILE:-release}
cargo build --profile "$profile" -p prompt2lora-local --example local_teacher_bench
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
for t in ${threads[@]}; do
  echo "== candle, $t thread(s)"
  CANDLE_NUM_THREADS=$t RAYON_NUM_THREADS=$t "target/$dir/examples/local_teacher_bench" "$model"
  if "$python" -c "import llama_cpp" 2>/dev/null; then
    echo "== llama.cpp, $t thread(s)"
    OMP_WAIT_POLICY=PASSIVE "$python" bench/local_teacher/llama_cpp_bench.py "$model" "$t"
  fi
done
