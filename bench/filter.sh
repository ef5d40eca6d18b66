#!/usr/bin/env bash
# The filter benchmark (results in bench/results/filter.md):
# 1. planted-duplicate sets from the training splits in $DATA (19.6k, 10k, 100k);
# 2. recall and precision of duplicate removal per kind, and a threshold sweep, with the real
#    embedder (embeddings cached beside each set, so the timing covers the filter alone);
# 3. wall time and peak memory of the filter after embedding at 10k and 100k;
# 4. embedding throughput of prompt2lora and of PyTorch sentence-transformers, same model,
#    same sentences, same thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to the folder that holds snips/ and smp2017_ecdt_task1/}
OUT=${OUT:-$PWD/target/filter-bench}
# The sets mix English and Chinese: the multilingual embedder judges semantic duplicates. The
# 100k set measures time only, with the smaller English embedder (its embeddings are computed
# once, before the timed part; the filter's work is the same for any 384-wide embedding).
EMBEDDER=${EMBEDDER:-e5-small}
EMBEDDER_100K=${EMBEDDER_100K:-minilm-l6}
PYTHON=${PYTHON:-python3}  # needs numpy and scipy (planted sets) and sentence-transformers
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}

"$PYTHON" bench/filter_planted.py --data "$DATA" --out "$OUT/planted"
"$PYTHON" bench/filter_planted.py --data "$DATA" --out "$OUT/s10k" --originals 8400 --total 10000 --seed 11
"$PYTHON" bench/filter_planted.py --data "$DATA" --out "$OUT/s100k" --total 100000 --seed 13

cargo bench -p prompt2lora-filter --bench planted --no-run
run() { cargo bench -q -p prompt2lora-filter --bench planted -- "$@"; }
run "$OUT/planted" --embedder "$EMBEDDER" --sweep
run "$OUT/s10k" --embedder "$EMBEDDER"
run "$OUT/s100k" --embedder "$EMBEDDER_100K"

MODEL_DIR=${MODEL_DIR:-${PROMPT2LORA_HOME:-$HOME/.cache/prompt2lora}/models/$EMBEDDER}
prefix=""
case $EMBEDDER in e5-*) prefix="query: " ;; esac  # prompt2lora adds it for e5 models itself
"$PYTHON" bench/filter_embed_torch.py --model "$MODEL_DIR" --samples "$OUT/planted/samples.jsonl" \
    --count 2048 --threads "$RAYON_NUM_THREADS" --prefix "$prefix" \
    --compare "$OUT/planted/embeddings-$EMBEDDER.bin"
