//! Stage 5: semantic duplicates within one intent: texts whose sentence embeddings (mean
//! pooling, unit length) have a cosine similarity at or above the threshold, however they are
//! worded. The best-ranked sample of each group stays.
//!
//! Pairs are found exactly for intents of up to [`EXACT_SEARCH_MAX`] samples, by blocked
//! matrix products (candle's CPU matmul, which uses every core and the widest SIMD the CPU
//! has), and with an HNSW index (`hnsw_rs`) above that, where the quadratic cost would
//! dominate.

use hnsw_rs::prelude::{Distance, Hnsw};
use prompt2lora_core::Embedder;
use prompt2lora_core::task::FilterSettings;
use rayon::prelude::*;

use crate::near::{greedy, group_ids, split};
use crate::{Candidate, FilterError, FilterOptions, StageOutput};

/// Largest intent searched exhaustively; larger ones go through the HNSW index.
pub const EXACT_SEARCH_MAX: usize = 20_000;
/// Texts per call of the embedder.
pub const EMBED_BATCH: usize = 256;
/// Rows of one block of the similarity matrix.
const BLOCK_ROWS: usize = 512;
/// Neighbours asked of the HNSW index per sample, and its search breadth.
const ANN_NEIGHBOURS: usize = 32;
const ANN_EF_SEARCH: usize = 128;
/// Most neighbours looked at for one sample (a group of duplicates larger than this is split).
const ANN_MAX_NEIGHBOURS: usize = 2048;
const ANN_EF_CONSTRUCTION: usize = 200;
const ANN_MAX_CONNECTIONS: usize = 24;

pub(crate) fn run(
    candidates: Vec<Candidate>,
    embedder: Option<&dyn Embedder>,
    settings: &FilterSettings,
    options: &FilterOptions,
) -> Result<StageOutput, FilterError> {
    let skipped = |why: &str| {
        let mut output = StageOutput::new(Vec::new(), Vec::new());
        output.notes.push(format!("skipped: {why}"));
        output
    };
    if !options.semantic {
        let mut output = skipped("turned off");
        output.kept = candidates;
        return Ok(output);
    }
    let Some(embedder) = embedder else {
        let mut output = skipped("no embedder");
        output.kept = candidates;
        return Ok(output);
    };
    let texts: Vec<&str> = candidates.iter().map(|c| c.sample.text.as_str()).collect();
    let embeddings = embed_all(embedder, &texts, options)?;
    let groups = group_ids(&candidates);
    let exact_max = options.exact_search_max.unwrap_or(EXACT_SEARCH_MAX);
    let pairs = similar_pairs(&embeddings, &groups, settings.semantic_threshold, exact_max)?;
    tracing::debug!(
        "semantic duplicates: {} pairs at cosine >= {}",
        pairs.len(),
        settings.semantic_threshold
    );
    let duplicate_of = greedy(&candidates, &pairs);
    Ok(split(
        candidates,
        duplicate_of,
        "semantic_duplicate",
        |similarity, _: &()| format!("semantic duplicate: cosine similarity {similarity:.3}"),
    ))
}

/// Unit-length embeddings of many texts, one row each.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub dim: usize,
    /// `len * dim` values, row after row.
    pub values: Vec<f32>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.values.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// Embeds `texts` in batches of similar length (less padding), checks what comes back, and
/// normalises every row to unit length (the embedder should already have; cosine similarity
/// then is a dot product). Rows come back in the order of `texts`.
pub fn embed_all(
    embedder: &dyn Embedder,
    texts: &[&str],
    options: &FilterOptions,
) -> Result<Embeddings, FilterError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut dim = 0;
    let mut values = Vec::new();
    let mut done = 0;
    for chunk in order.chunks(EMBED_BATCH) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let rows = embedder.embed(&batch).map_err(FilterError::Embed)?;
        if rows.len() != batch.len() {
            let message = format!("{} vectors for {} texts", rows.len(), batch.len());
            return Err(FilterError::BadEmbedding(message));
        }
        for (&i, mut row) in chunk.iter().zip(rows) {
            if dim == 0 {
                dim = row.len();
                values = vec![0.0; dim * texts.len()];
            }
            if row.len() != dim || dim == 0 {
                let message = format!("a vector of {} values where {dim} were expected", row.len());
                return Err(FilterError::BadEmbedding(message));
            }
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !norm.is_finite() || norm == 0.0 {
                let message = format!("a zero or non-finite vector for {:?}", texts[i]);
                return Err(FilterError::BadEmbedding(message));
            }
            row.iter_mut().for_each(|v| *v /= norm);
            values[i * dim..(i + 1) * dim].copy_from_slice(&row);
        }
        done += chunk.len();
        options.report_progress("embedding", done, texts.len());
    }
    Ok(Embeddings { dim, values })
}

/// Every pair `(a, b, cosine, ())`, `a < b`, of rows in the same group with cosine similarity
/// at or above `threshold`. Groups of more than `exact_max` rows use the HNSW index.
pub fn similar_pairs(
    embeddings: &Embeddings,
    groups: &[u32],
    threshold: f64,
    exact_max: usize,
) -> Result<Vec<(u32, u32, f32, ())>, FilterError> {
    let mut members: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i as u32);
    }
    let mut pairs = Vec::new();
    for rows in members.values() {
        let local = if rows.len() <= exact_max {
            exact_pairs(embeddings, rows, threshold as f32)?
        } else {
            tracing::debug!(
                "semantic duplicates: HNSW index for an intent of {} samples",
                rows.len()
            );
            approximate_pairs(embeddings, rows, threshold as f32)
        };
        pairs.extend(local.into_iter().map(|(a, b, s)| (rows[a], rows[b], s, ())));
    }
    Ok(pairs)
}

/// Pairs of positions in `rows` at or above `threshold`, from the exact similarity matrix,
/// computed a block of rows at a time against the rows after the block's start.
fn exact_pairs(
    embeddings: &Embeddings,
    rows: &[u32],
    threshold: f32,
) -> Result<Vec<(usize, usize, f32)>, FilterError> {
    use candle_core::{Device, Tensor};
    let search = |e: candle_core::Error| FilterError::Search(e.to_string());
    let n = rows.len();
    let dim = embeddings.dim;
    let mut gathered = Vec::with_capacity(n * dim);
    for &r in rows {
        gathered.extend_from_slice(embeddings.row(r as usize));
    }
    let all = Tensor::from_vec(gathered, (n, dim), &Device::Cpu).map_err(search)?;
    let mut pairs = Vec::new();
    for start in (0..n).step_by(BLOCK_ROWS) {
        let len = BLOCK_ROWS.min(n - start);
        let block = all.narrow(0, start, len).map_err(search)?;
        let rest = all.narrow(0, start, n - start).map_err(search)?;
        let similarities = block.matmul(&rest.t().map_err(search)?).map_err(search)?;
        let similarities: Vec<f32> = similarities
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(search)?;
        let width = n - start;
        for r in 0..len {
            // Columns after the diagonal: each pair once.
            let line = &similarities[r * width..(r + 1) * width];
            for (c, &s) in line.iter().enumerate().skip(r + 1) {
                if s >= threshold {
                    pairs.push((start + r, start + c, s.min(1.0)));
                }
            }
        }
    }
    Ok(pairs)
}

/// Cosine distance of unit vectors, `1 - dot`, clamped at 0: rounding makes the dot product of
/// a vector with itself slightly above 1, which `anndists`' own dot distance asserts against.
struct CosineDistance;

impl Distance<f32> for CosineDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD code.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The indexed points whose similarity to `vector` reaches `threshold`: the nearest
/// [`ANN_NEIGHBOURS`], and more while the farthest of them still reaches it, so that a large
/// group of duplicates is found whole (the greedy pass needs every kept neighbour).
fn neighbours_within(
    index: &Hnsw<'_, f32, CosineDistance>,
    vector: &[f32],
    threshold: f32,
) -> Vec<(usize, f32)> {
    let mut k = ANN_NEIGHBOURS;
    loop {
        let hits = index.search(vector, k, ANN_EF_SEARCH.max(k));
        let all_close = hits.len() == k && hits.iter().all(|h| 1.0 - h.distance >= threshold);
        if !all_close || k >= ANN_MAX_NEIGHBOURS {
            return hits
                .into_iter()
                .map(|h| (h.d_id, 1.0 - h.distance))
                .filter(|&(_, s)| s >= threshold)
                .collect();
        }
        k *= 4;
    }
}

/// Pairs of positions in `rows` at or above `threshold` among the neighbours of each row in an
/// HNSW index. A pair found from either side counts.
fn approximate_pairs(
    embeddings: &Embeddings,
    rows: &[u32],
    threshold: f32,
) -> Vec<(usize, usize, f32)> {
    let n = rows.len();
    let layers = 16.min((n as f64).ln().ceil() as usize).max(1);
    let index = Hnsw::<f32, CosineDistance>::new(
        ANN_MAX_CONNECTIONS,
        n,
        layers,
        ANN_EF_CONSTRUCTION,
        CosineDistance,
    );
    let data: Vec<(&[f32], usize)> = rows
        .iter()
        .enumerate()
        .map(|(k, &r)| (embeddings.row(r as usize), k))
        .collect();
    index.parallel_insert_slice(&data);
    let mut pairs: Vec<(usize, usize, f32)> = data
        .par_iter()
        .flat_map_iter(|&(vector, k)| {
            neighbours_within(&index, vector, threshold)
                .into_iter()
                .filter(move |&(j, _)| j != k)
                .map(move |(j, s)| (k.min(j), k.max(j), s))
        })
        .collect();
    pairs.par_sort_unstable_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
    pairs.dedup_by(|x, y| (x.0, x.1) == (y.0, y.1));
    pairs
}
