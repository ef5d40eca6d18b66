//! Stage 7: samples per intent before and after filtering, with a warning for every intent
//! that ends below the minimum (a thin intent trains a weak class).

use std::collections::BTreeMap;

use prompt2lora_core::{Reject, Sample, Task};

use crate::Candidate;
use crate::report::{FilterReport, IntentReport};

pub(crate) fn count_by_intent(candidates: &[Candidate]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for c in candidates {
        *counts.entry(c.sample.intent.clone()).or_insert(0) += 1;
    }
    counts
}

pub(crate) fn report(
    report: &mut FilterReport,
    task: &Task,
    before: &BTreeMap<String, usize>,
    kept: &[Sample],
    rejects: &[Reject],
    min_per_intent: usize,
) {
    let mut after: BTreeMap<&str, usize> = BTreeMap::new();
    for sample in kept {
        *after.entry(sample.intent.as_str()).or_insert(0) += 1;
    }
    for intent in task.intent_names() {
        let mut removed = BTreeMap::new();
        for reject in rejects
            .iter()
            .filter(|r| r.sample.intent == intent && r.stage != "read")
        {
            *removed.entry(reject.stage.clone()).or_insert(0) += 1;
        }
        let count = after.get(intent.as_str()).copied().unwrap_or(0);
        let below_minimum = count < min_per_intent;
        if below_minimum {
            let warning = format!(
                "intent `{intent}` has {count} samples after filtering (from {}), below the minimum of {min_per_intent}",
                before.get(&intent).copied().unwrap_or(0)
            );
            tracing::warn!("{warning}");
            report.warnings.push(warning);
        }
        report.intents.push(IntentReport {
            before: before.get(&intent).copied().unwrap_or(0),
            after: count,
            removed,
            below_minimum,
            intent,
        });
    }
}
