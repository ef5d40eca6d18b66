//! Builds the run report from what the stages left in a run folder: the filter report, the
//! training summary and loss curve, the eval metrics of student and teacher, the teacher's cost
//! ledger and the stage timings.

use std::path::Path;

use prompt2lora_core::Task;
use prompt2lora_eval::Comparison;
use prompt2lora_filter::FilterReport;
use prompt2lora_teacher::ledger::Ledger;
use serde_json::Value;

use crate::commands::run::{Round, RoundRecord, files};
use crate::report::{Figure, Report, Section, Table, bar_chart_svg};
use crate::stages::Stages;

/// The HTML page and a few lines for the terminal.
pub struct Built {
    pub html: String,
    pub summary: Vec<String>,
}

/// The report of the run in `dir`, whose final student is the one of round `best`.
pub fn build(
    dir: &Path,
    task: &Task,
    best: &Round,
    rounds: &[RoundRecord],
    real_eval: bool,
    price_per_label: f64,
) -> anyhow::Result<Built> {
    let stages = Stages::load(dir)?;
    let filter: Option<FilterReport> = read_json(&best.file(files::FILTER_REPORT))?;
    let adapter = best.file(files::ADAPTER);
    let train: Option<Value> = read_json(&adapter.join("train_summary.json"))?;
    let comparison: Option<Comparison> = read_json(&dir.join(files::EVAL).join("metrics.json"))?;
    let ledger: Ledger = read_json(&dir.join(files::LEDGER))?.unwrap_or_default();

    let mut report = Report {
        title: format!("prompt2lora run: {}", task.name),
        subtitle: format!(
            "{} intents, language {}, teacher {}, student {}",
            task.intents.len(),
            task.language,
            task.teacher.model,
            task.student()
        ),
        ..Report::default()
    };
    let mut terminal = Vec::new();

    // Headline numbers.
    let generated = filter.as_ref().map(|f| f.input);
    let kept = filter.as_ref().map(|f| f.kept);
    if let Some(c) = &comparison {
        let student = c.student.macro_f1;
        report
            .summary
            .push(("student macro-F1".into(), format!("{student:.3}")));
        terminal.push(format!(
            "student macro-F1 {student:.3} on {} test messages",
            c.test_set.messages
        ));
        if let Some(t) = &c.teacher {
            report.summary.push((
                "teacher macro-F1 (zero-shot)".into(),
                format!("{:.3}", t.metrics.macro_f1),
            ));
            let delta = student - t.metrics.macro_f1;
            report
                .summary
                .push(("student - teacher".into(), format!("{:+.3}", delta)));
            terminal.push(format!(
                "teacher macro-F1 {:.3} ({}); student - teacher {delta:+.3}",
                t.metrics.macro_f1, t.model
            ));
        }
        report.summary.push((
            "test set".into(),
            format!(
                "{} ({} messages)",
                if real_eval {
                    "real, labelled by people"
                } else {
                    "synthetic hold-out"
                },
                c.test_set.messages
            ),
        ));
    }
    if let (Some(g), Some(k)) = (generated, kept) {
        report
            .summary
            .push(("samples generated / kept".into(), format!("{g} / {k}")));
    }
    let total_seconds: f64 = STAGES.iter().map(|s| stages.total_seconds(s)).sum();
    report.summary.push((
        "wall time".into(),
        format!("{:.1} min", total_seconds / 60.0),
    ));
    let usd = ledger.total_usd() + 0.0; // an empty sum is -0.0
    report
        .summary
        .push(("teacher cost".into(), format!("${usd:.2}")));
    if let Some(k) = kept {
        report.summary.push((
            format!("the same labels by people (at ${price_per_label:.2} each)"),
            format!("${:.2}", k as f64 * price_per_label),
        ));
    }
    if !real_eval {
        report.notes.push(
            "The test set is a held-out slice of the filtered synthetic data, labelled by the \
             teacher: it measures how well the student learned the teacher, not accuracy on real \
             messages. Pass --eval with a labelled test set for that."
                .into(),
        );
    }

    if rounds.len() > 1 {
        report.sections.push(rounds_section(rounds, best.number)?);
        terminal.push(format!(
            "{} rounds; the student of round {} is kept",
            rounds.len(),
            best.number
        ));
    }
    if let Some(filter) = &filter {
        report.sections.push(filter_section(filter)?);
    }
    if let Some(train) = &train {
        report.sections.push(train_section(&adapter, train));
    }
    if let Some(c) = &comparison {
        report.sections.push(eval_section(dir, c)?);
    }
    report.sections.push(cost_section(&stages, &ledger)?);
    Ok(Built {
        html: report.to_html(),
        summary: terminal,
    })
}

fn filter_section(filter: &FilterReport) -> anyhow::Result<Section> {
    let mut section = Section {
        title: "Filter".into(),
        text: Some(format!(
            "{} of {} samples kept; {} removed, each written to rejects.jsonl with its reason.",
            filter.kept, filter.input, filter.rejected
        )),
        ..Section::default()
    };
    section.figures.push(Figure {
        caption: "Filter funnel: samples left after each stage.".into(),
        svg: prompt2lora_filter::plot::funnel_svg(filter)?,
    });
    if let Some(svg) = prompt2lora_filter::plot::confidence_histogram_svg(filter)? {
        section.figures.push(Figure {
            caption: "Combined confidence per intent (10 buckets) before the confidence cut."
                .into(),
            svg,
        });
    }
    section.tables.push(Table {
        caption: Some("Funnel".into()),
        headers: vec![
            "stage".into(),
            "in".into(),
            "removed".into(),
            "out".into(),
            "reasons".into(),
        ],
        rows: filter
            .funnel
            .iter()
            .map(|s| {
                let reasons: Vec<String> =
                    s.reasons.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                vec![
                    s.stage.clone(),
                    s.before.to_string(),
                    s.removed.to_string(),
                    s.after.to_string(),
                    reasons.join(", "),
                ]
            })
            .collect(),
    });
    section.tables.push(Table {
        caption: Some("Samples per intent".into()),
        headers: vec!["intent".into(), "before".into(), "after".into()],
        rows: filter
            .intents
            .iter()
            .map(|i| vec![i.intent.clone(), i.before.to_string(), i.after.to_string()])
            .collect(),
    });
    Ok(section)
}

/// The stages of a run, in order; later rounds' stages count towards the stage they repeat.
const STAGES: [&str; 4] = ["generate", "filter", "train", "eval"];

fn rounds_section(rounds: &[RoundRecord], best: usize) -> anyhow::Result<Section> {
    let mut section = Section {
        title: "Rounds".into(),
        text: Some(format!(
            "Every round after the first generated samples for the intents the student scored \
             worst on the validation set, written so as not to be mistaken for the intent each \
             was most confused with, then retrained. A round is kept only if validation \
             macro-F1 improved; the student of round {best} is the final one."
        )),
        ..Section::default()
    };
    let categories: Vec<String> = rounds
        .iter()
        .map(|r| format!("round {}", r.round))
        .collect();
    let f1: Vec<f64> = rounds.iter().map(|r| r.validation_macro_f1).collect();
    section.figures.push(Figure {
        caption: "Validation macro-F1 per round.".into(),
        svg: bar_chart_svg(
            "Validation macro-F1",
            &categories,
            &[("macro-F1".into(), f1)],
            "macro-F1",
        )?,
    });
    section.tables.push(Table {
        caption: None,
        headers: [
            "round",
            "targeted intents (validation F1, against)",
            "new samples",
            "training examples",
            "validation macro-F1",
            "kept",
        ]
        .map(String::from)
        .to_vec(),
        rows: rounds
            .iter()
            .map(|r| {
                let targets: Vec<String> = r
                    .targets
                    .iter()
                    .map(|t| {
                        let against = t.contrast.as_deref().unwrap_or("-");
                        format!("{} ({:.3}, {against})", t.intent, t.f1)
                    })
                    .collect();
                vec![
                    r.round.to_string(),
                    if targets.is_empty() {
                        "-".into()
                    } else {
                        targets.join(", ")
                    },
                    r.generated.to_string(),
                    r.train_examples.to_string(),
                    format!("{:.3}", r.validation_macro_f1),
                    if r.kept { "yes" } else { "no" }.into(),
                ]
            })
            .collect(),
    });
    Ok(section)
}

fn train_section(adapter: &Path, train: &Value) -> Section {
    let field = |key: &str| {
        train
            .get(key)
            .map(render_value)
            .unwrap_or_else(|| "-".into())
    };
    let rank = train.get("rank");
    let rank_text = rank
        .map(|r| {
            let chosen = r.get("rank").map(render_value).unwrap_or_default();
            let why = r.get("reason").and_then(Value::as_str).unwrap_or_default();
            format!("{chosen} {why}").trim().to_string()
        })
        .unwrap_or_else(|| "-".into());
    let mut section = Section {
        title: "Training".into(),
        tables: vec![Table {
            caption: None,
            headers: vec![],
            rows: vec![
                vec!["student".into(), field("base_model")],
                vec!["LoRA rank".into(), rank_text],
                vec![
                    "training / validation examples".into(),
                    format!(
                        "{} / {}",
                        field("train_examples"),
                        field("validation_examples")
                    ),
                ],
                vec![
                    "epochs run (best)".into(),
                    format!("{} ({})", field("epochs_run"), field("best_epoch")),
                ],
                vec!["validation macro-F1".into(), field("validation_macro_f1")],
                vec!["examples per second".into(), field("examples_per_second")],
            ],
        }],
        ..Section::default()
    };
    if let Ok(svg) = fs_err::read_to_string(adapter.join("loss_curve.svg")) {
        section.figures.push(Figure {
            caption: "Training loss and validation macro-F1.".into(),
            svg,
        });
    }
    section
}

fn eval_section(dir: &Path, c: &Comparison) -> anyhow::Result<Section> {
    let mut section = Section {
        title: "Evaluation".into(),
        ..Section::default()
    };
    let labels: Vec<String> = c
        .student
        .per_intent
        .iter()
        .map(|i| i.intent.clone())
        .collect();
    let mut series = vec![(
        "student".to_string(),
        c.student.per_intent.iter().map(|i| i.f1).collect(),
    )];
    if let Some(t) = &c.teacher {
        let f1 = labels
            .iter()
            .map(|l| t.metrics.intent(l).map_or(0.0, |i| i.f1))
            .collect();
        series.push((format!("teacher ({})", t.model), f1));
    }
    section.figures.push(Figure {
        caption: "F1 per intent, student beside the teacher's zero-shot labels.".into(),
        svg: bar_chart_svg("F1 per intent", &labels, &series, "F1")?,
    });
    for (file, caption) in [
        (
            prompt2lora_eval::evaluate::files::CONFUSION,
            "Student confusion matrix (rows: true intent).",
        ),
        (
            prompt2lora_eval::evaluate::files::TEACHER_CONFUSION,
            "Teacher confusion matrix (rows: true intent).",
        ),
        (
            prompt2lora_eval::evaluate::files::RELIABILITY,
            "Calibration of the student's top probability.",
        ),
    ] {
        if let Ok(svg) = fs_err::read_to_string(dir.join(files::EVAL).join(file)) {
            section.figures.push(Figure {
                caption: caption.into(),
                svg,
            });
        }
    }
    let mut headers = vec![
        "intent".to_string(),
        "support".into(),
        "precision".into(),
        "recall".into(),
        "F1".into(),
    ];
    if c.teacher.is_some() {
        headers.push("teacher F1".into());
    }
    let rows = c
        .student
        .per_intent
        .iter()
        .map(|i| {
            let mut row = vec![
                i.intent.clone(),
                i.support.to_string(),
                format!("{:.3}", i.precision),
                format!("{:.3}", i.recall),
                format!("{:.3}", i.f1),
            ];
            if let Some(t) = &c.teacher {
                row.push(
                    t.metrics
                        .intent(&i.intent)
                        .map_or("-".into(), |m| format!("{:.3}", m.f1)),
                );
            }
            row
        })
        .collect();
    section.tables.push(Table {
        caption: Some("Per intent".into()),
        headers,
        rows,
    });
    let mut overall = vec![vec![
        "student".to_string(),
        format!("{:.3}", c.student.accuracy),
        format!("{:.3}", c.student.macro_f1),
        c.student
            .calibration
            .as_ref()
            .map_or("-".into(), |k| format!("{:.3}", k.ece)),
    ]];
    if let Some(t) = &c.teacher {
        overall.push(vec![
            format!("teacher ({})", t.model),
            format!("{:.3}", t.metrics.accuracy),
            format!("{:.3}", t.metrics.macro_f1),
            t.metrics
                .calibration
                .as_ref()
                .map_or("-".into(), |k| format!("{:.3}", k.ece)),
        ]);
    }
    section.tables.push(Table {
        caption: Some("Student vs teacher".into()),
        headers: vec![
            "model".into(),
            "accuracy".into(),
            "macro-F1".into(),
            "ECE".into(),
        ],
        rows: overall,
    });
    Ok(section)
}

fn cost_section(stages: &Stages, ledger: &Ledger) -> anyhow::Result<Section> {
    let names = STAGES;
    let minutes: Vec<f64> = names
        .iter()
        .map(|s| stages.total_seconds(s) / 60.0)
        .collect();
    let mut section = Section {
        title: "Time and cost".into(),
        ..Section::default()
    };
    let categories: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    section.figures.push(Figure {
        caption: "Wall-clock minutes per stage, as last run.".into(),
        svg: bar_chart_svg(
            "Minutes per stage",
            &categories,
            &[("minutes".into(), minutes.clone())],
            "minutes",
        )?,
    });
    section.tables.push(Table {
        caption: Some("Teacher usage".into()),
        headers: vec![
            "model".into(),
            "requests".into(),
            "prompt tokens".into(),
            "completion tokens".into(),
            "USD".into(),
        ],
        rows: ledger
            .models
            .iter()
            .map(|(model, c)| {
                vec![
                    model.clone(),
                    c.requests.to_string(),
                    c.prompt_tokens.to_string(),
                    c.completion_tokens.to_string(),
                    format!("{:.4}", c.usd),
                ]
            })
            .collect(),
    });
    Ok(section)
}

fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match fs_err::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
