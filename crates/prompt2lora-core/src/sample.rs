//! The sample record: one JSONL line, the same type in every stage from generate to eval.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::text::normalize;

/// One message with its intent, the confidence signals and where it came from.
///
/// Optional fields are written as `null` rather than left out, so that every line has the same
/// columns and `datasets.load_dataset("json", ...)` infers one schema for the whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable id: see [`Sample::id_for`].
    pub id: String,
    pub text: String,
    pub intent: String,
    /// Confidence as the teacher stated it, in [0, 1].
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Probability of `intent` from the teacher's token log-probabilities, in [0, 1].
    #[serde(default)]
    pub label_logprob: Option<f64>,
    /// Share of k labelling samples that chose `intent`, in [0, 1].
    #[serde(default)]
    pub agreement: Option<f64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub provenance: Provenance,
}

/// Where a sample came from. Every field is optional: hand-made or imported records have none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Model id of the teacher that wrote or labelled the sample.
    #[serde(default)]
    pub teacher: Option<String>,
    /// Short hash of the prompt template that produced the sample.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// The intent the teacher was asked to write for (synthesize mode).
    #[serde(default)]
    pub requested_intent: Option<String>,
    /// Ids of the few-shot examples shown in the generation prompt.
    #[serde(default)]
    pub few_shot: Vec<String>,
    /// `synthesize`, `label`, `seed` or `import`.
    #[serde(default)]
    pub source: Option<String>,
    /// RFC 3339 time the record was made.
    #[serde(default)]
    pub created: Option<String>,
}

impl Sample {
    /// A sample with the given text and intent and no signals or provenance.
    pub fn new(text: impl Into<String>, intent: impl Into<String>) -> Self {
        let text = text.into();
        Sample {
            id: Self::id_for(&text),
            text,
            intent: intent.into(),
            confidence: None,
            label_logprob: None,
            agreement: None,
            reason: None,
            provenance: Provenance::default(),
        }
    }

    /// The id of a text: the first 16 hex digits of the SHA-256 of its normalised form, so the
    /// same message always gets the same id and trivially different spellings collide on
    /// purpose (they are the same sample).
    pub fn id_for(text: &str) -> String {
        let digest = Sha256::digest(normalize(text).as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A sample removed by some stage, as written to `rejects.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    #[serde(flatten)]
    pub sample: Sample,
    /// The stage that removed it: `read`, `validity`, `drift`, `exact_duplicate`,
    /// `near_duplicate`, `semantic_duplicate`, `confidence`, ...
    pub stage: String,
    /// Why the stage removed it. Written as `reject_reason`, because the sample's own `reason`
    /// (the teacher's) is in the same JSON object.
    #[serde(rename = "reject_reason")]
    pub reason: String,
    /// For duplicates: the id of the sample that was kept instead.
    #[serde(default)]
    pub duplicate_of: Option<String>,
}

/// Current time as RFC 3339, for provenance.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable_and_ignores_trivial_differences() {
        let a = Sample::id_for("我要退货！");
        assert_eq!(a, Sample::id_for("我要退货"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, Sample::id_for("我要换货"));
    }

    #[test]
    fn every_field_is_written() {
        let line = serde_json::to_string(&Sample::new("hi", "other")).unwrap();
        for key in [
            "confidence",
            "label_logprob",
            "agreement",
            "reason",
            "requested_intent",
        ] {
            assert!(
                line.contains(&format!("\"{key}\":")),
                "{key} missing in {line}"
            );
        }
    }

    #[test]
    fn reject_keeps_both_reasons_apart() {
        let mut sample = Sample::new("hi", "other");
        sample.reason = Some("greeting".into());
        let reject = Reject {
            sample,
            stage: "validity".into(),
            reason: "too short".into(),
            duplicate_of: None,
        };
        let value: serde_json::Value = serde_json::to_value(&reject).unwrap();
        assert_eq!(value["reason"], "greeting");
        assert_eq!(value["reject_reason"], "too short");
        let back: Reject = serde_json::from_value(value).unwrap();
        assert_eq!(back, reject);
    }
}
