//! The filter stage of prompt2lora: raw teacher output in, training data out.
//!
//! [`filter`] runs these stages, in this order; each one removes samples and says why:
//! 1. [`validity`]: record checks (id, signal ranges), non-empty text, known intent, length;
//! 2. [`drift`]: synthesized samples whose teacher label differs from the requested intent are
//!    dropped or kept under the teacher's label;
//! 3. [`exact`]: duplicates after normalisation (NFKC, case, whitespace, punctuation);
//! 4. [`near`]: near duplicates by MinHash over character n-grams with LSH banding;
//! 5. [`semantic`]: duplicates by the cosine similarity of sentence embeddings;
//! 6. [`confidence`]: a combined confidence score, histograms, and a per-intent cut;
//! 7. [`balance`]: samples per intent before and after, with warnings for thin intents.
//!
//! Every removed sample becomes a [`Reject`] with its stage, its reason and, for duplicates, the
//! id of the sample kept instead: kept + rejected = input, always. Lines of the input file that
//! could not be read are rejects of the stage `read` ([`input::read_input`]).
//!
//! Duplicates: the sample kept from a group is the one ranked first by combined confidence
//! (input order breaks ties). Near and semantic duplicates are only looked for within one
//! intent, because two close texts with different intents are a contrast the student should
//! learn, not redundancy; exact duplicates are looked for across intents, because one text
//! with two labels is a conflict that only one label can win.

pub mod balance;
pub mod confidence;
pub mod drift;
pub mod exact;
pub mod input;
pub mod near;
pub mod plot;
pub mod report;
pub mod semantic;
pub mod validity;

#[cfg(test)]
mod tests;

use std::time::Instant;

use prompt2lora_core::task::FilterSettings;
use prompt2lora_core::{Embedder, Reject, Sample, Task};

pub use input::{FilterInput, read_input};
pub use report::{FilterReport, IntentReport, StageReport};

/// Everything that tunes one filter run. Start from [`FilterOptions::from_task`], then apply
/// command-line overrides to `settings`.
pub struct FilterOptions {
    /// The `[filter]` settings, after command-line overrides.
    pub settings: FilterSettings,
    /// Run the semantic-duplicate stage (it also needs an embedder).
    pub semantic: bool,
    /// Name of the embedding model, recorded in the report.
    pub embedder_name: Option<String>,
    /// Largest intent whose semantic duplicates are searched exhaustively; `None` uses
    /// [`semantic::EXACT_SEARCH_MAX`]. Larger intents go through an approximate index.
    pub exact_search_max: Option<usize>,
    /// Called as work advances: (what, done, total). Used for progress bars.
    pub progress: Option<Progress>,
}

impl FilterOptions {
    pub fn from_task(task: &Task) -> Self {
        FilterOptions {
            settings: task.filter.clone(),
            semantic: true,
            embedder_name: Some(task.embedder()),
            exact_search_max: None,
            progress: None,
        }
    }

    pub(crate) fn report_progress(&self, what: &str, done: usize, total: usize) {
        if let Some(progress) = &self.progress {
            progress(what, done, total);
        }
    }

    /// Checks the settings that the task-file loader cannot see (command-line overrides).
    pub fn validate(&self) -> Result<(), FilterError> {
        let s = &self.settings;
        for (key, value) in [
            ("keep_fraction", s.keep_fraction),
            ("near_duplicate_threshold", s.near_duplicate_threshold),
            ("semantic_threshold", s.semantic_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FilterError::Setting(format!(
                    "{key} = {value} is not between 0 and 1"
                )));
            }
        }
        if let Some(t) = s.min_confidence.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(FilterError::Setting(format!(
                "min_confidence = {t} is not between 0 and 1"
            )));
        }
        if s.ngram == 0 {
            return Err(FilterError::Setting("ngram must be at least 1".into()));
        }
        if s.min_chars > s.max_chars {
            let message = format!(
                "min_chars = {} is above max_chars = {}",
                s.min_chars, s.max_chars
            );
            return Err(FilterError::Setting(message));
        }
        Ok(())
    }
}

/// A progress callback: (what, done, total).
pub type Progress = Box<dyn Fn(&str, usize, usize) + Send + Sync>;

/// What [`filter`] returns.
#[derive(Debug)]
pub struct FilterOutcome {
    /// Training data, in input order.
    pub kept: Vec<Sample>,
    /// Every removed sample, in the order of the stages.
    pub rejects: Vec<Reject>,
    pub report: FilterReport,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("filter setting {0}")]
    Setting(String),
    #[error("embedding failed")]
    Embed(#[source] prompt2lora_core::ModelError),
    #[error("the embedder returned {0}")]
    BadEmbedding(String),
    #[error("nearest-neighbour search failed: {0}")]
    Search(String),
}

/// A sample on its way through the stages, with what the stages computed about it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub sample: Sample,
    /// Position in the input: the last tie-breaker, and the order of the output.
    pub position: usize,
    /// Combined confidence; `None` when the sample carries no signal.
    pub score: Option<f64>,
    /// Normalised text, filled in by the exact-duplicate stage.
    pub normalized: String,
}

impl Candidate {
    /// Sort key for "which sample of a duplicate group is kept": higher first.
    pub fn rank_key(&self) -> (f64, f64, std::cmp::Reverse<usize>) {
        // A sample without signals (a seed example, an import) is trusted like a certain one.
        let score = self.score.unwrap_or(1.0);
        let verbalised = self.sample.confidence.unwrap_or(0.0);
        (score, verbalised, std::cmp::Reverse(self.position))
    }

    pub fn reject(self, stage: &str, reason: String, duplicate_of: Option<String>) -> Reject {
        Reject {
            sample: self.sample,
            stage: stage.into(),
            reason,
            duplicate_of,
        }
    }
}

/// Orders candidates best first, by [`Candidate::rank_key`].
pub(crate) fn rank_order(candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (candidates[a].rank_key(), candidates[b].rank_key());
        kb.0.total_cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    order
}

/// What one stage did: the survivors and the removed samples.
pub(crate) struct StageOutput {
    pub kept: Vec<Candidate>,
    pub rejects: Vec<Reject>,
    /// Free-form notes for the report (`"skipped: no embedder"`).
    pub notes: Vec<String>,
    /// The confidence stage's histograms and cuts.
    pub confidence: Option<confidence::ConfidenceSummary>,
}

impl StageOutput {
    pub fn new(kept: Vec<Candidate>, rejects: Vec<Reject>) -> Self {
        StageOutput {
            kept,
            rejects,
            notes: Vec::new(),
            confidence: None,
        }
    }
}

type StageFn<'a> = Box<dyn FnOnce(Vec<Candidate>) -> Result<StageOutput, FilterError> + 'a>;

/// Runs every stage on `input` (samples, plus the rejects of reading them).
///
/// `embedder` is needed by the semantic-duplicate stage only; without one (or with
/// `options.semantic` false) that stage is skipped and the report says so.
pub fn filter(
    input: impl Into<FilterInput>,
    task: &Task,
    embedder: Option<&dyn Embedder>,
    options: &FilterOptions,
) -> Result<FilterOutcome, FilterError> {
    options.validate()?;
    let FilterInput {
        samples,
        rejects: read_rejects,
    } = input.into();
    let settings = &options.settings;
    let input_count = samples.len() + read_rejects.len();
    let mut report = FilterReport::new(input_count, settings, options);
    report.record_stage(
        "read",
        input_count,
        read_rejects.len(),
        &read_rejects,
        0.0,
        vec![],
    );
    let mut rejects = read_rejects;

    let candidates: Vec<Candidate> = samples
        .into_iter()
        .enumerate()
        .map(|(position, sample)| Candidate {
            score: confidence::combined(&sample),
            sample,
            position,
            normalized: String::new(),
        })
        .collect();
    let intents_before = balance::count_by_intent(&candidates);

    let mut stage = |name: &str, candidates: Vec<Candidate>, run: StageFn<'_>| {
        let before = candidates.len();
        let started = Instant::now();
        let output = run(candidates)?;
        let seconds = started.elapsed().as_secs_f64();
        let removed = output.rejects.len();
        tracing::debug!("{name}: removed {removed} of {before} in {seconds:.2} s");
        report.record_stage(
            name,
            before,
            removed,
            &output.rejects,
            seconds,
            output.notes,
        );
        if let Some(summary) = output.confidence {
            report.confidence = Some(summary);
        }
        rejects.extend(output.rejects);
        Ok::<_, FilterError>(output.kept)
    };
    let c = stage(
        "validity",
        candidates,
        Box::new(|c| Ok(validity::run(c, task, settings))),
    )?;
    let c = stage("drift", c, Box::new(|c| Ok(drift::run(c, settings.drift))))?;
    let c = stage("exact_duplicate", c, Box::new(|c| Ok(exact::run(c))))?;
    let c = stage(
        "near_duplicate",
        c,
        Box::new(|c| Ok(near::run(c, settings, options))),
    )?;
    let c = stage(
        "semantic_duplicate",
        c,
        Box::new(|c| semantic::run(c, embedder, settings, options)),
    )?;
    let mut candidates = stage(
        "confidence",
        c,
        Box::new(|c| Ok(confidence::run(c, settings))),
    )?;

    candidates.sort_by_key(|c| c.position);
    let kept: Vec<Sample> = candidates.into_iter().map(|c| c.sample).collect();
    balance::report(
        &mut report,
        task,
        &intents_before,
        &kept,
        &rejects,
        settings.min_per_intent,
    );
    report.finish(&kept, &rejects);
    Ok(FilterOutcome {
        kept,
        rejects,
        report,
    })
}
