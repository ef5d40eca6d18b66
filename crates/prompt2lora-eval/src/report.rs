//! Terminal tables of the eval stage: the headline numbers, per-intent scores of student and
//! teacher side by side, and the confusion matrix.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

use crate::evaluate::Comparison;
use crate::metrics::Metrics;

/// Headline lines: accuracy, macro-F1 and calibration of each model, the difference, and the
/// catch-all threshold.
pub fn summary(comparison: &Comparison) -> String {
    let mut lines = vec![format!(
        "test set: {} ({} messages)",
        comparison.test_set.path, comparison.test_set.messages
    )];
    lines.push(format!("student: {}", headline(&comparison.student)));
    if let Some(teacher) = &comparison.teacher {
        lines.push(format!(
            "teacher ({}): {}",
            teacher.model,
            headline(&teacher.metrics)
        ));
    }
    if let (Some(delta), Some(agreement)) = (comparison.student_minus_teacher, comparison.agreement)
    {
        let verdict = if delta.macro_f1 > 0.0 {
            "the student beats the teacher"
        } else if delta.macro_f1 < 0.0 {
            "the teacher is better"
        } else {
            "a tie"
        };
        lines.push(format!(
            "student - teacher: accuracy {:+.3}, macro-F1 {:+.3} ({verdict}); they agree on {:.1}% of messages",
            delta.accuracy,
            delta.macro_f1,
            agreement * 100.0
        ));
    }
    for (who, metrics) in models(comparison) {
        let Some(routing) = &metrics.catch_all else {
            continue;
        };
        if routing.routed == 0 {
            lines.push(format!(
                "{who}: routing low-probability answers to `{}` does not help on this test set",
                routing.intent
            ));
        } else {
            lines.push(format!(
                "{who}: answering `{}` when the top probability is below {:.3} gives accuracy {:.3}, \
                 macro-F1 {:.3} ({} messages rerouted)",
                routing.intent, routing.threshold, routing.accuracy, routing.macro_f1, routing.routed
            ));
        }
    }
    lines.join("\n")
}

fn headline(metrics: &Metrics) -> String {
    let mut line = format!(
        "accuracy {:.3}, macro-F1 {:.3}, weighted-F1 {:.3}",
        metrics.accuracy, metrics.macro_f1, metrics.weighted_f1
    );
    if let Some(calibration) = &metrics.calibration {
        line.push_str(&format!(", ECE {:.3}", calibration.ece));
    }
    line
}

fn models(comparison: &Comparison) -> Vec<(String, &Metrics)> {
    let mut models = vec![("student".to_string(), &comparison.student)];
    if let Some(teacher) = &comparison.teacher {
        models.push(("teacher".to_string(), &teacher.metrics));
    }
    models
}

/// Precision, recall and F1 per intent; with a teacher, its scores in the next columns.
pub fn per_intent_table(comparison: &Comparison) -> String {
    let teacher = comparison.teacher.as_ref().map(|t| &t.metrics);
    let mut header = vec!["intent", "support", "precision", "recall", "F1"];
    if teacher.is_some() {
        header.extend(["teacher P", "teacher R", "teacher F1"]);
    }
    let mut table = new_table(header);
    for (i, m) in comparison.student.per_intent.iter().enumerate() {
        let mut row = vec![
            m.intent.clone(),
            m.support.to_string(),
            format!("{:.3}", m.precision),
            format!("{:.3}", m.recall),
            format!("{:.3}", m.f1),
        ];
        if let Some(t) = teacher.map(|t| &t.per_intent[i]) {
            row.extend([
                format!("{:.3}", t.precision),
                format!("{:.3}", t.recall),
                format!("{:.3}", t.f1),
            ]);
        }
        table.add_row(row);
    }
    right_align_numbers(&mut table);
    table.to_string()
}

/// The confusion matrix: one row per gold intent, one column per predicted intent.
pub fn confusion_table(metrics: &Metrics) -> String {
    let mut header = vec!["gold \\ predicted".to_string()];
    header.extend(metrics.labels.iter().cloned());
    let mut table = new_table(header);
    for (label, row) in metrics.labels.iter().zip(&metrics.confusion) {
        let mut cells = vec![label.clone()];
        cells.extend(row.iter().map(|n| {
            if *n == 0 {
                ".".to_string()
            } else {
                n.to_string()
            }
        }));
        table.add_row(cells);
    }
    right_align_numbers(&mut table);
    table.to_string()
}

fn new_table<T: Into<comfy_table::Cell>>(header: Vec<T>) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(header);
    table
}

fn right_align_numbers(table: &mut Table) {
    for column in table.column_iter_mut().skip(1) {
        column.set_cell_alignment(CellAlignment::Right);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Delta, TeacherMetrics, TestSetInfo};

    fn comparison() -> Comparison {
        let labels = vec!["退货".to_string(), "other".to_string()];
        let gold = [0, 0, 1, 1];
        let student = Metrics::compute_with_catch_all(
            &gold,
            &[0, 0, 1, 0],
            Some(&[0.9, 0.8, 0.9, 0.3]),
            &labels,
            Some("other"),
        )
        .unwrap();
        let teacher = Metrics::compute(&gold, &[0, 1, 1, 1], None, &labels).unwrap();
        Comparison {
            test_set: TestSetInfo {
                path: "test.jsonl".into(),
                messages: 4,
            },
            student_minus_teacher: Some(Delta {
                accuracy: student.accuracy - teacher.accuracy,
                macro_f1: student.macro_f1 - teacher.macro_f1,
            }),
            student,
            teacher: Some(TeacherMetrics {
                model: "qwen".into(),
                metrics: teacher,
            }),
            agreement: Some(0.5),
        }
    }

    #[test]
    fn summary_reports_both_models_and_routing() {
        let text = summary(&comparison());
        assert!(
            text.contains("student: accuracy 0.750, macro-F1 0.733"),
            "{text}"
        );
        assert!(text.contains("teacher (qwen): accuracy 0.750"), "{text}");
        assert!(text.contains("agree on 50.0% of messages"), "{text}");
        assert!(
            text.contains("answering `other` when the top probability is below 0.550"),
            "{text}"
        );
    }

    #[test]
    fn tables_show_every_intent() {
        let c = comparison();
        let table = per_intent_table(&c);
        assert!(table.contains("teacher F1"));
        assert!(table.contains("退货"));
        let confusion = confusion_table(&c.student);
        assert_eq!(
            confusion.lines().filter(|l| l.contains("退货")).count(),
            2,
            "{confusion}"
        );
    }
}
