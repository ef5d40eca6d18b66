//! Stage 2: drift. In synthesize mode the teacher is asked to write messages for one intent
//! and then labels what it wrote; when the label differs from the request, the message drifted
//! away from its intent. Such samples are dropped, or kept under the teacher's label.
//!
//! A sample is synthesized when its provenance names a `requested_intent`; its `intent` is the
//! teacher's label.

use prompt2lora_core::task::DriftAction;

use crate::{Candidate, StageOutput};

pub(crate) fn run(candidates: Vec<Candidate>, action: DriftAction) -> StageOutput {
    let mut output = StageOutput::new(Vec::with_capacity(candidates.len()), Vec::new());
    let mut relabelled = 0;
    for candidate in candidates {
        let requested = candidate.sample.provenance.requested_intent.as_deref();
        let drifted = requested.is_some_and(|r| r != candidate.sample.intent);
        if !drifted {
            output.kept.push(candidate);
        } else if action == DriftAction::Relabel {
            relabelled += 1;
            output.kept.push(candidate);
        } else {
            let reason = format!(
                "drifted: written for `{}`, labelled `{}` by the teacher",
                requested.unwrap_or_default(),
                candidate.sample.intent
            );
            output.rejects.push(candidate.reject("drift", reason, None));
        }
    }
    if relabelled > 0 {
        output.notes.push(format!(
            "relabelled {relabelled} drifted samples to the teacher's label"
        ));
    }
    output
}
