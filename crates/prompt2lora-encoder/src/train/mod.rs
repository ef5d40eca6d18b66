//! The train stage: from filtered samples to a LoRA adapter. Holds out a stratified validation
//! split, picks the rank, fine-tunes with AdamW under a warmup-then-decay schedule, keeps the best
//! epoch by validation macro-F1, checkpoints on the way, and writes the adapter, log and plot.
//!
//! Entry point: [`train`].

pub mod checkpoint;
pub mod data;
pub mod log;
pub mod optim;
pub mod rank;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use prompt2lora_core::task::TrainSettings;
use prompt2lora_core::{Sample, Task};
use rand::SeedableRng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::adapter::{self, AdapterMeta};
use crate::base::BaseModel;
use crate::kernels::derive_seed;
use crate::lora::{LoraSpec, attach, lora_vars};
use crate::model::{Batch, Dropouts, Head, Student};
use crate::{Error, Result};
use data::Example;
use log::{EpochRecord, History, StepRecord};
use rank::{RankChoice, RankDecision, SweepResult};

/// Receives progress while training runs (a progress bar, a test).
pub trait Observer: Send {
    /// Training of `total_steps` updates starts (at `first_step` when resumed).
    fn start(&mut self, _total_steps: usize, _first_step: usize) {}
    fn step(&mut self, _record: &StepRecord) {}
    fn epoch(&mut self, _record: &EpochRecord) {}
    /// Something worth a line on the terminal (rank choice, sweep progress).
    fn message(&mut self, _text: &str) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Where and how [`train`] runs, besides the task's `[train]` settings.
pub struct TrainOptions<'a> {
    /// The adapter folder to write.
    pub out_dir: PathBuf,
    /// Checkpoint folder; default `checkpoints` beside `out_dir`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the newest checkpoint in the checkpoint folder.
    pub resume: bool,
    /// Also write merged full weights to `out_dir/merged`.
    pub merge: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
    /// A validation set to score every epoch on, instead of holding out
    /// `validation_fraction` of the samples (the closed loop of `run` keeps one fixed set
    /// across rounds, so that their scores compare).
    pub validation: Option<&'a [Sample]>,
    pub observer: &'a mut dyn Observer,
}

/// What a training run did, for the terminal and the run report.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub adapter_dir: PathBuf,
    pub merged_dir: Option<PathBuf>,
    pub log_path: PathBuf,
    pub plot_path: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub resumed_from: Option<PathBuf>,
    pub student: String,
    pub base_model: String,
    pub rank: RankDecision,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: Option<usize>,
    pub validation_macro_f1: Option<f64>,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub steps: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    /// Training examples per second of training time (validation excluded).
    pub examples_per_second: f64,
    /// Peak resident memory of the process, where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// Fine-tunes the task's student on `samples` and writes the adapter to `options.out_dir`.
///
/// Settings come from `task.train` (apply command-line overrides to a copy of the task first).
/// Returns [`Error::Interrupted`] when `options.stop` was set; the checkpoint it names resumes
/// to the same result as an uninterrupted run.
pub fn train(task: &Task, samples: &[Sample], options: TrainOptions<'_>) -> Result<TrainSummary> {
    let threads = task.train.threads;
    if threads == 0 {
        return train_inner(task, samples, options);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Settings(format!("cannot start {threads} threads: {e}")))?;
    pool.install(|| train_inner(task, samples, options))
}

fn train_inner(task: &Task, samples: &[Sample], options: TrainOptions<'_>) -> Result<TrainSummary> {
    let s = &task.train;
    check_settings(s)?;
    let observer = options.observer;

    // Data: labels, tokens, the validation split and loss weights. A given validation set is
    // appended to the samples and split off again by position.
    let joined: Vec<Sample>;
    let given_validation = options.validation.map(<[Sample]>::len);
    let samples = match options.validation {
        Some(validation) => {
            joined = samples.iter().chain(validation).cloned().collect();
            &joined[..]
        }
        None => samples,
    };
    let labels = task.intent_names();
    let label_ids = data::label_indices(samples, &labels)?;
    let student_name = task.student();
    let base = BaseModel::resolve(&student_name)?;
    let text = base.text_encoder(s.max_length)?;
    let texts: Vec<&str> = samples.iter().map(|x| x.text.as_str()).collect();
    let ids = text.encode(&texts)?;
    let (train_idx, val_idx) = match given_validation {
        Some(n) => {
            let first = samples.len() - n;
            ((0..first).collect(), (first..samples.len()).collect())
        }
        None => data::stratified_split(&label_ids, labels.len(), s.validation_fraction, s.seed),
    };
    if train_idx.is_empty() {
        return Err(Error::Data(
            "no training samples left after the validation split".into(),
        ));
    }
    let class_weights = s
        .class_weights
        .then(|| data::class_weights(&label_ids, labels.len()));
    let example = |i: usize, weighted: bool| Example {
        ids: ids[i].clone(),
        label: label_ids[i],
        weight: if weighted {
            let c = class_weights.as_ref().map_or(1.0, |w| w[label_ids[i]]);
            let q = if s.confidence_weighted {
                data::combined_confidence(&samples[i]) as f32
            } else {
                1.0
            };
            c * q
        } else {
            1.0
        },
    };
    let train_set: Vec<Example> = train_idx.iter().map(|&i| example(i, true)).collect();
    let val_set: Vec<Example> = val_idx.iter().map(|&i| example(i, false)).collect();
    tracing::info!(
        "{} samples: {} for training, {} held out for validation; {} intents",
        samples.len(),
        train_set.len(),
        val_set.len(),
        labels.len()
    );

    // The base encoder, loaded once; adapters are attached per run.
    let mut student = Student {
        encoder: base.load_encoder()?,
        pooling: base.pooling,
        head: Head::new(
            labels.len(),
            base.config.hidden_size,
            &mut rand::rngs::StdRng::seed_from_u64(0),
        )?,
    };
    let checkpoint_dir = options
        .checkpoint_dir
        .clone()
        .unwrap_or_else(|| default_checkpoint_dir(&options.out_dir));
    let fingerprint = fingerprint(s, &student_name, &labels, samples);
    let resume_from = if options.resume {
        checkpoint::list(&checkpoint_dir)?.pop()
    } else {
        None
    };
    if options.resume && resume_from.is_none() {
        tracing::warn!(
            "--resume: no checkpoint in {}, starting from the beginning",
            checkpoint_dir.display()
        );
    }

    // Rank: fixed, auto or sweep (a resumed run keeps the rank of its checkpoint).
    let choice = RankChoice::parse(&s.rank).ok_or_else(|| {
        Error::Settings(format!(
            "rank `{}` is not a positive number, `auto` or `sweep`",
            s.rank
        ))
    })?;
    let decision = match (&resume_from, choice) {
        (Some(path), _) => {
            let (state, _) = checkpoint::load(path, &[])?;
            RankDecision {
                rank: state.rank,
                method: "resumed".into(),
                reason: format!("rank {} of checkpoint {}", state.rank, path.display()),
                mean_confidence: None,
                sweep: Vec::new(),
            }
        }
        (None, RankChoice::Fixed(rank)) => RankDecision {
            rank,
            method: "fixed".into(),
            reason: format!("rank {rank} as set"),
            mean_confidence: None,
            sweep: Vec::new(),
        },
        (None, RankChoice::Auto) => {
            let confidences: Vec<f64> = train_idx
                .iter()
                .map(|&i| data::combined_confidence(&samples[i]))
                .collect();
            rank::auto_rank(&confidences)
        }
        (None, RankChoice::Sweep) => sweep(
            &mut student,
            s,
            &train_set,
            &val_set,
            labels.len(),
            text.pad_id(),
            observer,
        )?,
    };
    let message = format!(
        "LoRA rank {} ({}): {}",
        decision.rank, decision.method, decision.reason
    );
    tracing::debug!("{message}");
    observer.message(&message);

    // The full run.
    let spec = lora_spec(s, decision.rank);
    let params = fresh_adapters(&mut student, &spec, labels.len(), s.seed)?;
    let plan = CheckpointPlan {
        dir: checkpoint_dir.clone(),
        every: s.save_steps,
        keep: s.keep_checkpoints,
        fingerprint,
        rank: decision.rank,
    };
    let epochs = run_epochs(s, train_set.len());
    if epochs > s.epochs {
        let per_epoch = train_set.len().div_ceil(s.batch_size);
        observer.message(&format!(
            "{epochs} epochs instead of {}: {} training examples make {per_epoch} update{} per \
             epoch, and a run makes at least train.min_steps = {}",
            s.epochs,
            train_set.len(),
            if per_epoch == 1 { "" } else { "s" },
            s.min_steps
        ));
    }
    let run = Run {
        student: &student,
        params: &params,
        train: &train_set,
        validation: &val_set,
        classes: labels.len(),
        pad_id: text.pad_id(),
        settings: s,
        epochs,
        checkpoints: Some(&plan),
        stop: options.stop,
    };
    let outcome = run.fit(resume_from.as_deref(), observer)?;

    // Outputs: adapter, merged weights, log and plot.
    let meta = AdapterMeta {
        labels: labels.clone(),
        student: student_name.clone(),
        base_model: base.id.clone(),
        pooling: base.pooling,
        max_length: s.max_length,
        rank: decision.rank,
        alpha: spec.alpha,
        lora_dropout: s.lora_dropout,
        targets: spec.targets.clone(),
    };
    adapter::save(&options.out_dir, &student, &meta, Some(task))?;
    let merged_dir = if options.merge {
        let dir = options.out_dir.join("merged");
        adapter::save_merged(&dir, &student, &meta, &base)?;
        Some(dir)
    } else {
        None
    };
    let log_path = options.out_dir.join("train_log.jsonl");
    let plot_path = options.out_dir.join("loss_curve.svg");
    outcome.state.history.write_jsonl(&log_path)?;
    let title = format!("{} — rank {}, {}", task.name, decision.rank, base.id);
    outcome.state.history.plot(&plot_path, &title)?;

    let summary = TrainSummary {
        adapter_dir: options.out_dir.clone(),
        merged_dir,
        log_path,
        plot_path,
        checkpoint_dir,
        resumed_from: resume_from,
        student: student_name,
        base_model: base.id.clone(),
        rank: decision,
        best_epoch: outcome.state.best_epoch.map(|e| e + 1),
        validation_macro_f1: outcome.state.best_f1,
        epochs_run: outcome.state.history.epochs.len(),
        stopped_early: outcome.state.stopped_early,
        steps: outcome.state.step,
        train_examples: train_set.len(),
        validation_examples: val_set.len(),
        examples_per_second: outcome.examples_per_second,
        peak_rss_bytes: peak_rss_bytes(),
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Model(e.to_string()))?;
    fs_err::write(options.out_dir.join("train_summary.json"), json)?;
    Ok(summary)
}

fn check_settings(s: &TrainSettings) -> Result<()> {
    let bad = |key: &str, why: &str| Err(Error::Settings(format!("train.{key}: {why}")));
    if s.epochs == 0 {
        return bad("epochs", "must be at least 1");
    }
    if s.batch_size == 0 {
        return bad("batch_size", "must be at least 1");
    }
    if s.max_length < 3 {
        return bad("max_length", "must be at least 3 tokens");
    }
    if s.learning_rate.is_nan() || s.learning_rate <= 0.0 {
        return bad("learning_rate", "must be positive");
    }
    if s.lora_dropout >= 1.0 || s.dropout >= 1.0 {
        return bad("dropout", "must be below 1");
    }
    if s.targets.is_empty() {
        return bad("targets", "name at least one module");
    }
    Ok(())
}

/// `checkpoints` beside the adapter folder (`run/adapter` -> `run/checkpoints`).
pub fn default_checkpoint_dir(out_dir: &Path) -> PathBuf {
    match out_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("checkpoints"),
        _ => PathBuf::from("checkpoints"),
    }
}

fn lora_spec(s: &TrainSettings, rank: usize) -> LoraSpec {
    LoraSpec {
        rank,
        alpha: s.alpha.unwrap_or(2.0 * rank as f64),
        dropout: s.lora_dropout,
        targets: s.targets.clone(),
    }
}

/// Removes any adapters, attaches fresh ones and a fresh head, all from `seed`; returns the
/// trainable parameters in a stable order (adapters, then the head).
fn fresh_adapters(
    student: &mut Student,
    spec: &LoraSpec,
    classes: usize,
    seed: u64,
) -> Result<Vec<(String, Var)>> {
    for layer in &mut student.encoder.layers {
        for linear in layer.linears_mut() {
            linear.lora = None;
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, 0x10A4));
    attach(&mut student.encoder, spec, &mut rng)?;
    student.head = Head::new(classes, student.encoder.config.hidden_size, &mut rng)?;
    let mut params = lora_vars(&student.encoder);
    params.push(("classifier.weight".into(), student.head.weight.clone()));
    params.push(("classifier.bias".into(), student.head.bias.clone()));
    Ok(params)
}

/// Short runs at every rank of [`rank::SWEEP_RANKS`] on the same split.
fn sweep(
    student: &mut Student,
    s: &TrainSettings,
    train: &[Example],
    validation: &[Example],
    classes: usize,
    pad_id: u32,
    observer: &mut dyn Observer,
) -> Result<RankDecision> {
    if validation.is_empty() {
        return Err(Error::Settings(
            "rank `sweep` needs a validation split: set train.validation_fraction above 0".into(),
        ));
    }
    // A quarter of the full run, so that small data sets get their minimum of updates too.
    let epochs = run_epochs(s, train.len()).div_ceil(4).max(1);
    let mut results = Vec::new();
    for rank in rank::SWEEP_RANKS {
        observer.message(&format!(
            "rank sweep: training rank {rank} for {epochs} epoch(s)"
        ));
        let params = fresh_adapters(student, &lora_spec(s, rank), classes, s.seed)?;
        let run = Run {
            student,
            params: &params,
            train,
            validation,
            classes,
            pad_id,
            settings: s,
            epochs,
            checkpoints: None,
            stop: None,
        };
        let outcome = run.fit(None, &mut Silent)?;
        let f1 = outcome.state.best_f1.unwrap_or(0.0);
        let parameters = params.iter().map(|(_, p)| p.as_tensor().elem_count()).sum();
        tracing::info!(
            "rank sweep: rank {rank}: validation macro-F1 {f1:.4}, {parameters} parameters"
        );
        results.push(SweepResult {
            rank,
            validation_macro_f1: f1,
            parameters,
        });
    }
    Ok(rank::pick_sweep(results))
}

struct CheckpointPlan {
    dir: PathBuf,
    every: usize,
    keep: usize,
    fingerprint: String,
    rank: usize,
}

struct Run<'a> {
    student: &'a Student,
    params: &'a [(String, Var)],
    train: &'a [Example],
    validation: &'a [Example],
    classes: usize,
    pad_id: u32,
    settings: &'a TrainSettings,
    epochs: usize,
    checkpoints: Option<&'a CheckpointPlan>,
    stop: Option<&'a AtomicBool>,
}

struct Outcome {
    state: checkpoint::State,
    examples_per_second: f64,
}

/// Validation batches hold this many examples.
const EVAL_BATCH: usize = 64;

impl Run<'_> {
    /// The training loop; restores from `resume` first when given. On return the parameters
    /// hold the best epoch's weights (the last ones when there is no validation split).
    fn fit(&self, resume: Option<&Path>, observer: &mut dyn Observer) -> Result<Outcome> {
        let s = self.settings;
        let names: Vec<String> = self.params.iter().map(|(n, _)| n.clone()).collect();
        let steps_per_epoch = self.train.len().div_ceil(s.batch_size);
        let total = steps_per_epoch * self.epochs;
        let warmup = (s.warmup * total as f64).ceil() as usize;
        let lengths: Vec<usize> = self.train.iter().map(|e| e.ids.len()).collect();

        // Fresh or restored state.
        let mut adam = optim::AdamW::new(self.params, s.weight_decay)?;
        let mut best: Option<Vec<Tensor>> = None;
        let mut state = checkpoint::State {
            fingerprint: self
                .checkpoints
                .map(|c| c.fingerprint.clone())
                .unwrap_or_default(),
            rank: self.checkpoints.map_or(0, |c| c.rank),
            step: 0,
            epoch: 0,
            batch: 0,
            best_f1: None,
            best_epoch: None,
            stale_epochs: 0,
            stopped_early: false,
            history: History::default(),
        };
        if let Some(path) = resume {
            let (saved_state, saved) = checkpoint::load(path, &names)?;
            if saved_state.fingerprint != state.fingerprint {
                return Err(Error::Settings(format!(
                    "checkpoint {} was made with other settings or data; remove it or train without --resume",
                    path.display()
                )));
            }
            for ((_, p), t) in self.params.iter().zip(&saved.params) {
                p.set(t)?;
            }
            adam.m = saved.m;
            adam.v = saved.v;
            adam.t = saved_state.step as u64;
            best = saved.best;
            state = saved_state;
            tracing::info!("resuming from {} at step {}", path.display(), state.step);
        }
        observer.start(total, state.step);

        let mut train_seconds = 0f64;
        let mut trained_examples = 0usize;
        while state.epoch < self.epochs && !state.stopped_early {
            let batches = data::epoch_batches(&lengths, s.batch_size, s.seed, state.epoch);
            while state.batch < batches.len() {
                let started = Instant::now();
                let lr = optim::learning_rate(state.step, total, warmup, s.learning_rate);
                let members = &batches[state.batch];
                let (loss, grad_norm) = self.step(members, state.step, lr, &mut adam)?;
                let seconds = started.elapsed().as_secs_f64();
                train_seconds += seconds;
                trained_examples += members.len();
                state.step += 1;
                state.batch += 1;
                let record = StepRecord {
                    step: state.step,
                    epoch: state.epoch + 1,
                    loss,
                    learning_rate: lr,
                    grad_norm,
                    examples_per_second: members.len() as f64 / seconds.max(1e-9),
                };
                observer.step(&record);
                state.history.steps.push(record);
                let stop = self.stop.is_some_and(|f| f.load(Ordering::SeqCst));
                let due =
                    |plan: &CheckpointPlan| plan.every > 0 && state.step.is_multiple_of(plan.every);
                if let Some(plan) = self.checkpoints.filter(|plan| stop || due(plan)) {
                    let path = self.save_checkpoint(plan, &state, &adam, best.as_deref())?;
                    if stop {
                        return Err(Error::Interrupted(path));
                    }
                }
            }

            // End of epoch: validation, best weights, early stopping.
            let epoch_steps =
                &state.history.steps[state.history.steps.len().saturating_sub(batches.len())..];
            let train_loss =
                epoch_steps.iter().map(|r| r.loss).sum::<f64>() / epoch_steps.len().max(1) as f64;
            let validation = if self.validation.is_empty() {
                None
            } else {
                Some(self.evaluate()?)
            };
            let record = EpochRecord {
                epoch: state.epoch + 1,
                step: state.step,
                train_loss,
                validation_loss: validation.map(|v| v.0),
                validation_accuracy: validation.map(|v| v.1),
                validation_macro_f1: validation.map(|v| v.2),
            };
            tracing::debug!(
                "epoch {}: train loss {:.4}{}",
                record.epoch,
                train_loss,
                validation.map_or(String::new(), |v| format!(
                    ", validation loss {:.4}, accuracy {:.4}, macro-F1 {:.4}",
                    v.0, v.1, v.2
                ))
            );
            observer.epoch(&record);
            state.history.epochs.push(record);
            let f1 = validation.map(|v| v.2);
            if let Some(f1) = f1 {
                if state.best_f1.is_none_or(|b| f1 > b) {
                    state.best_f1 = Some(f1);
                    state.best_epoch = Some(state.epoch);
                    state.stale_epochs = 0;
                    best = Some(
                        self.params
                            .iter()
                            .map(|(_, p)| p.as_tensor().copy())
                            .collect::<candle_core::Result<_>>()?,
                    );
                } else {
                    state.stale_epochs += 1;
                    let patience_over = s.patience > 0 && state.stale_epochs >= s.patience;
                    if patience_over && state.step >= s.min_steps {
                        tracing::info!(
                            "early stop: no better validation macro-F1 for {} epochs",
                            s.patience
                        );
                        state.stopped_early = true;
                    }
                }
            } else {
                state.best_epoch = Some(state.epoch);
            }
            state.epoch += 1;
            state.batch = 0;
        }

        if let Some(best) = best {
            for ((_, p), t) in self.params.iter().zip(best) {
                p.set(&t)?;
            }
        }
        let examples_per_second = trained_examples as f64 / train_seconds.max(1e-9);
        Ok(Outcome {
            state,
            examples_per_second,
        })
    }

    /// One optimiser update on the batch `members`; returns the loss and the gradient norm.
    fn step(
        &self,
        members: &[usize],
        step: usize,
        lr: f64,
        adam: &mut optim::AdamW,
    ) -> Result<(f64, f64)> {
        let s = self.settings;
        let seqs: Vec<&[u32]> = members
            .iter()
            .map(|&i| self.train[i].ids.as_slice())
            .collect();
        let batch = Batch::pad(&seqs, self.pad_id);
        let dropouts = Dropouts {
            hidden: s.dropout as f32,
            attention: s.dropout as f32,
            lora: s.lora_dropout as f32,
            seed: derive_seed(s.seed, step as u64),
        };
        let logits = self.student.forward(&batch, Some(&dropouts), None)?;
        let labels: Vec<u32> = members
            .iter()
            .map(|&i| self.train[i].label as u32)
            .collect();
        let weights: Vec<f32> = members.iter().map(|&i| self.train[i].weight).collect();
        let loss = weighted_cross_entropy(&logits, &labels, &weights)?;
        let grads = loss.backward()?;
        let mut grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| match grads.get(p.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => p.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let norm = optim::clip_grad_norm(&mut grads, s.max_grad_norm)?;
        adam.step(self.params, &grads, lr)?;
        Ok((loss.to_scalar::<f32>()? as f64, norm))
    }

    /// Validation loss, accuracy and macro-F1, without dropout.
    fn evaluate(&self) -> Result<(f64, f64, f64)> {
        let mut order: Vec<usize> = (0..self.validation.len()).collect();
        order.sort_by_key(|&i| self.validation[i].ids.len());
        let mut predicted = vec![0usize; self.validation.len()];
        let mut loss_sum = 0f64;
        for chunk in order.chunks(EVAL_BATCH) {
            let seqs: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| self.validation[i].ids.as_slice())
                .collect();
            let batch = Batch::pad(&seqs, self.pad_id);
            let logits = self.student.forward(&batch, None, None)?.detach();
            let log_probs: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, 1)?.to_vec2()?;
            for (&i, row) in chunk.iter().zip(log_probs) {
                loss_sum -= row[self.validation[i].label] as f64;
                predicted[i] = argmax(&row);
            }
        }
        let gold: Vec<usize> = self.validation.iter().map(|e| e.label).collect();
        let correct = gold.iter().zip(&predicted).filter(|(g, p)| g == p).count();
        let n = gold.len() as f64;
        Ok((
            loss_sum / n,
            correct as f64 / n,
            data::macro_f1(&gold, &predicted, self.classes),
        ))
    }

    fn save_checkpoint(
        &self,
        plan: &CheckpointPlan,
        state: &checkpoint::State,
        adam: &optim::AdamW,
        best: Option<&[Tensor]>,
    ) -> Result<PathBuf> {
        let names: Vec<String> = self.params.iter().map(|(n, _)| n.clone()).collect();
        let saved = checkpoint::Saved {
            params: self
                .params
                .iter()
                .map(|(_, p)| p.as_tensor().clone())
                .collect(),
            m: adam.m.clone(),
            v: adam.v.clone(),
            best: best.map(<[Tensor]>::to_vec),
        };
        let path = checkpoint::save(&plan.dir, &names, state, &saved, plan.keep)?;
        tracing::debug!("checkpoint {}", path.display());
        Ok(path)
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `-sum_i w_i log p(y_i | x_i) / sum_i w_i`.
fn weighted_cross_entropy(logits: &Tensor, labels: &[u32], weights: &[f32]) -> Result<Tensor> {
    let n = labels.len();
    let log_probs = candle_nn::ops::log_softmax(logits, 1)?;
    let labels = Tensor::from_slice(labels, (n, 1), &Device::Cpu)?;
    let picked = log_probs.gather(&labels, 1)?.squeeze(1)?;
    let total: f32 = weights.iter().sum::<f32>().max(1e-8);
    let weights = Tensor::from_slice(weights, n, &Device::Cpu)?;
    Ok(((picked * weights)?.sum_all()? * (-1.0 / total as f64))?)
}

/// Epochs of a full run: `train.epochs`, or more where that would make fewer than
/// `train.min_steps` updates. Few updates leave a student at the majority class however good
/// the data, which early stopping on a flat start would then keep.
fn run_epochs(s: &TrainSettings, train_examples: usize) -> usize {
    let per_epoch = train_examples.div_ceil(s.batch_size).max(1);
    s.epochs.max(s.min_steps.div_ceil(per_epoch))
}

/// A digest of everything that shapes the trained weights, so that a checkpoint never resumes a
/// different training.
fn fingerprint(s: &TrainSettings, student: &str, labels: &[String], samples: &[Sample]) -> String {
    let mut h = Sha256::new();
    let relevant = serde_json::json!({
        "student": student, "rank": s.rank, "alpha": s.alpha, "lora_dropout": s.lora_dropout,
        "dropout": s.dropout, "targets": s.targets, "epochs": s.epochs, "batch_size": s.batch_size,
        "learning_rate": s.learning_rate, "weight_decay": s.weight_decay, "warmup": s.warmup,
        "max_grad_norm": s.max_grad_norm, "max_length": s.max_length,
        "validation_fraction": s.validation_fraction, "patience": s.patience,
        "min_steps": s.min_steps, "seed": s.seed,
        "class_weights": s.class_weights, "confidence_weighted": s.confidence_weighted,
        "labels": labels,
    });
    h.update(relevant.to_string().as_bytes());
    for sample in samples {
        h.update(sample.text.as_bytes());
        h.update([0]);
        h.update(sample.intent.as_bytes());
        h.update([0]);
        if s.confidence_weighted {
            h.update(data::combined_confidence(sample).to_le_bytes());
        }
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Peak resident set size from `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests;
