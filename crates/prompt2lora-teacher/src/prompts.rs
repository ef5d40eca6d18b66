//! The prompts of the generate stage (writing messages, labelling them), the JSON schemas the
//! answers must follow, and the tolerant parsing of what teachers actually answer.

use prompt2lora_core::{ChatMessage, Task};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Longest message kept from a generation answer, in characters (the sample reader's limit).
pub const MAX_MESSAGE_CHARS: usize = prompt2lora_core::jsonl::DEFAULT_MAX_CHARS;

const GENERATE_SYSTEM: &str = "You write realistic messages that customers send to a business. \
They become training data for a classifier, so they must read like real messages: varied, \
natural, sometimes informal or with typos, never like a template.";

const LABEL_SYSTEM: &str = "You classify customer messages by the intent they express.";

const GENERATE_RULES: &str = "Rules:
- Write only the customer's own words: no reply from the business, no narration, no labels, \
no numbering or quotes around a message.
- Keep to what the customer knows and says; do not invent facts about the business, and do not \
explain the intent.
- Each message must clearly belong to the requested intent and to no other intent in the list.
- Do not copy or paraphrase the example messages; they only show the style.";

const LABEL_RULES: &str = "Judge only by what the message says; do not assume facts it does \
not state.";

/// Variation axes: every message of a request gets its own draw, so a batch is not ten
/// versions of the same customer.
const PERSONAS: &[&str] = &[
    "a first-time customer",
    "a loyal regular customer",
    "an elderly customer unused to apps",
    "a busy professional",
    "a student on a budget",
    "a parent shopping for a child",
    "a small-business owner buying in bulk",
    "a customer buying a gift",
    "a tech-savvy customer",
    "a customer writing in a second language",
    "a customer who already contacted support before",
    "an impatient customer",
];
const TONES: &[&str] = &[
    "polite",
    "neutral",
    "frustrated",
    "angry",
    "anxious",
    "friendly",
    "curt",
    "confused",
];
const LENGTHS: &[&str] = &[
    "very short (a few words)",
    "one short sentence",
    "one sentence",
    "two or three sentences",
    "a short paragraph",
];
const CHANNELS: &[&str] = &[
    "live chat",
    "email",
    "app message",
    "SMS",
    "social media direct message",
    "phone call transcript",
];
const MENTIONS: &[&str] = &[
    "nothing specific",
    "a product",
    "an order or tracking number",
    "a date or time",
    "an amount of money",
    "an earlier conversation",
    "a reason or circumstance",
];

/// The language name the teacher is asked to write in.
pub fn language_name(code: &str) -> String {
    let name = match code.to_ascii_lowercase().as_str() {
        "zh" | "zh-cn" | "zh-hans" => "Simplified Chinese",
        "zh-tw" | "zh-hant" => "Traditional Chinese",
        "en" => "English",
        "ja" => "Japanese",
        "ko" => "Korean",
        "de" => "German",
        "fr" => "French",
        "es" => "Spanish",
        "pt" => "Portuguese",
        "it" => "Italian",
        "ru" => "Russian",
        "ar" => "Arabic",
        "mixed" => "the language of the example messages (vary it as they do)",
        _ => return format!("the language with code `{code}`"),
    };
    name.to_string()
}

fn intent_list(task: &Task) -> String {
    let mut list = String::new();
    for intent in &task.intents {
        list.push_str(&format!(
            "- {}: {}\n",
            intent.name.get_ref(),
            intent.description.trim()
        ));
    }
    if let Some(catch_all) = task.catch_all() {
        list.push_str(&format!(
            "If no other intent fits, the intent is `{catch_all}`.\n"
        ));
    }
    list
}

/// A short hash of a prompt template, recorded in sample provenance.
fn template_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Provenance hash of the generation prompt template.
pub fn generate_prompt_hash() -> String {
    template_hash(&["generate-v1", GENERATE_SYSTEM, GENERATE_RULES])
}

/// Provenance hash of the labelling prompt template, with or without calibration of the
/// scores by the teacher's prior.
pub fn label_prompt_hash(calibrated: bool) -> String {
    let calibration = if calibrated { "calibrated" } else { "raw" };
    template_hash(&["label-v1", LABEL_SYSTEM, LABEL_RULES, calibration])
}

/// One draw of the variation axes, as a line of the generation prompt.
pub fn variation<R: Rng + ?Sized>(rng: &mut R) -> String {
    fn pick<R: Rng + ?Sized>(list: &[&'static str], rng: &mut R) -> &'static str {
        list.choose(rng).expect("non-empty")
    }
    format!(
        "{}, {} tone, {}, sent by {}, mentioning {}",
        pick(PERSONAS, rng),
        pick(TONES, rng),
        pick(LENGTHS, rng),
        pick(CHANNELS, rng),
        pick(MENTIONS, rng),
    )
}

/// The request for `variations.len()` new messages of `intent`; with `contrast`, messages that
/// sit near the border with that other intent yet clearly belong to `intent`.
pub fn generate_messages(
    task: &Task,
    intent: &str,
    contrast: Option<&str>,
    examples: &[&str],
    variations: &[String],
) -> Vec<ChatMessage> {
    let description = task.intent(intent).map_or("", |i| i.description.trim());
    let n = variations.len();
    let mut user = format!(
        "Task: {}.\nThe intents of the classifier:\n{}\nWrite {n} different messages in {} that \
         a customer would send for the intent `{intent}` ({description}).\n",
        task.name,
        intent_list(task),
        language_name(&task.language),
    );
    if let Some(other) = contrast.filter(|&other| other != intent) {
        let other_description = task.intent(other).map_or("", |i| i.description.trim());
        user.push_str(&format!(
            "\nA classifier often mistakes messages of `{intent}` for `{other}` \
             ({other_description}). Write messages that could at first sight look like \
             `{other}` but that clearly ask for `{intent}`: state what the customer wants in their \
             own words, so that a careful reader has no doubt.\n"
        ));
    }
    if !examples.is_empty() {
        user.push_str("\nExample messages of this intent:\n");
        for example in examples {
            user.push_str(&format!("- {}\n", one_line(example)));
        }
    }
    user.push_str("\nWrite one message for each of these customers:\n");
    for (i, v) in variations.iter().enumerate() {
        user.push_str(&format!("{}. {v}\n", i + 1));
    }
    user.push_str(&format!(
        "\n{GENERATE_RULES}\n\nAnswer with only a JSON object, no code fence: \
         {{\"messages\": [\"...\", ...]}} with exactly {n} strings, in the order above."
    ));
    vec![
        ChatMessage::system(GENERATE_SYSTEM),
        ChatMessage::user(user),
    ]
}

/// Schema of a generation answer.
pub fn messages_schema() -> Value {
    json!({
        "title": "messages",
        "type": "object",
        "properties": { "messages": { "type": "array", "items": { "type": "string" } } },
        "required": ["messages"],
        "additionalProperties": false,
    })
}

fn label_user(task: &Task, text: &str) -> String {
    format!(
        "The intents:\n{}\nThe message:\n<<<\n{}\n>>>\n\n{LABEL_RULES}\n",
        intent_list(task),
        text.trim()
    )
}

/// The labelling request answered with `{intent, confidence, reason}`.
pub fn label_json_messages(task: &Task, text: &str) -> Vec<ChatMessage> {
    let names: Vec<String> = task
        .intent_names()
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    let user = format!(
        "{}Answer with only a JSON object, no code fence: {{\"intent\": one of [{}], \
         \"confidence\": your confidence from 0 to 1, \"reason\": at most 15 words, citing the \
         message}}",
        label_user(task, text),
        names.join(", ")
    );
    vec![ChatMessage::system(LABEL_SYSTEM), ChatMessage::user(user)]
}

/// The labelling request answered with the intent name alone: the prompt for scoring each
/// intent name by log-probability, and for quick self-consistency votes.
pub fn label_name_messages(task: &Task, text: &str) -> Vec<ChatMessage> {
    let user = format!(
        "{}Answer with the intent name only.",
        label_user(task, text)
    );
    vec![ChatMessage::system(LABEL_SYSTEM), ChatMessage::user(user)]
}

/// Schema of a labelling answer; `intent` comes first so that its tokens come first.
pub fn label_schema(task: &Task) -> Value {
    json!({
        "title": "label",
        "type": "object",
        "properties": {
            "intent": { "type": "string", "enum": task.intent_names() },
            "confidence": { "type": "number" },
            "reason": { "type": "string" },
        },
        "required": ["intent", "confidence", "reason"],
        "additionalProperties": false,
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The JSON value in a teacher's answer: the whole answer, the inside of a code fence, or the
/// outermost object or array in the text.
pub fn extract_json(answer: &str) -> Option<Value> {
    let trimmed = answer.trim();
    if let Ok(value) = serde_json::from_str(trimmed) {
        return Some(value);
    }
    let unfenced = strip_fence(trimmed);
    if let Ok(value) = serde_json::from_str(unfenced) {
        return Some(value);
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        let (Some(start), Some(end)) = (unfenced.find(open), unfenced.rfind(close)) else {
            continue;
        };
        if start < end
            && let Ok(value) = serde_json::from_str(&unfenced[start..=end])
        {
            return Some(value);
        }
    }
    None
}

fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.split_once('\n').map_or(rest, |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

/// The messages of a generation answer, cleaned; `Err` says what is wrong with the answer.
pub fn parse_messages(answer: &str) -> Result<Vec<String>, String> {
    let value = extract_json(answer).ok_or("the answer is not JSON")?;
    let items = match &value {
        Value::Object(map) => map
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("the JSON object has no `messages` array")?,
        Value::Array(items) => items,
        _ => return Err("the answer is neither a JSON object nor an array".into()),
    };
    let messages: Vec<String> = items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o
                .get("text")
                .or_else(|| o.get("message"))
                .and_then(Value::as_str),
            _ => None,
        })
        .map(clean_message)
        .filter(|m| !m.is_empty())
        .collect();
    if messages.is_empty() {
        return Err("`messages` holds no non-empty strings".into());
    }
    Ok(messages)
}

/// Trims whitespace, list markers and the quotes some teachers put around a message.
pub fn clean_message(text: &str) -> String {
    let mut t = text.trim();
    for quote in [('"', '"'), ('“', '”'), ('「', '」'), ('\'', '\'')] {
        if t.chars().count() >= 2 && t.starts_with(quote.0) && t.ends_with(quote.1) {
            t = t[quote.0.len_utf8()..t.len() - quote.1.len_utf8()].trim();
        }
    }
    t.to_string()
}

/// A labelling answer, checked against the task's intents.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLabel {
    pub intent: String,
    pub confidence: Option<f64>,
    pub reason: Option<String>,
}

/// The intent named by `answer`, matched exactly, then ignoring case, quotes and punctuation.
pub fn match_intent(task: &Task, answer: &str) -> Option<String> {
    let names = task.intent_names();
    let simple = |s: &str| -> String {
        s.trim()
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '`' || c == '.' || c == '。')
            .trim()
            .to_lowercase()
    };
    let wanted = simple(strip_fence(answer.trim()));
    names
        .iter()
        .find(|n| n.as_str() == answer.trim())
        .or_else(|| names.iter().find(|n| simple(n) == wanted))
        .cloned()
}

/// Parses `{intent, confidence, reason}`; `Err` says what is wrong, for the repair request.
pub fn parse_label(task: &Task, answer: &str) -> Result<ParsedLabel, String> {
    let value = extract_json(answer).ok_or("the answer is not JSON")?;
    let object = value.as_object().ok_or("the answer is not a JSON object")?;
    let raw = object
        .get("intent")
        .and_then(Value::as_str)
        .ok_or("the object has no string `intent`")?;
    let intent = match_intent(task, raw).ok_or_else(|| {
        format!(
            "`{raw}` is not one of the intents {}",
            task.intent_names().join(", ")
        )
    })?;
    let confidence = match object.get("confidence") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().trim_end_matches('%').parse::<f64>().ok(),
        _ => None,
    }
    .map(|c| if c > 1.0 && c <= 100.0 { c / 100.0 } else { c })
    .filter(|c| (0.0..=1.0).contains(c));
    let reason = object
        .get("reason")
        .and_then(Value::as_str)
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    Ok(ParsedLabel {
        intent,
        confidence,
        reason,
    })
}

/// The follow-up that asks a teacher to fix an answer that did not parse.
pub fn repair_messages(
    mut messages: Vec<ChatMessage>,
    answer: &str,
    problem: &str,
) -> Vec<ChatMessage> {
    messages.push(ChatMessage::assistant(answer));
    messages.push(ChatMessage::user(format!(
        "That answer cannot be used: {problem}. Answer again with only the JSON object, no code \
         fence, exactly as asked."
    )));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn task() -> Task {
        Task::parse(
            r#"
name = "shop"
language = "zh"
catch_all = "其他"
[[intents]]
name = "退货"
description = "想退货退款"
examples = ["这双鞋我想退了"]
[[intents]]
name = "其他"
description = "其他问题"
"#,
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn json_is_found_in_fences_and_prose() {
        let fenced =
            "```json\n{\"intent\": \"退货\", \"confidence\": 0.9, \"reason\": \"要退\"}\n```";
        let label = parse_label(&task(), fenced).unwrap();
        assert_eq!(label.intent, "退货");
        assert_eq!(label.confidence, Some(0.9));
        let prose =
            "Sure! {\"messages\": [\"  \\\"我要退货\\\" \", \"\", \"能退吗\"]} Hope it helps.";
        assert_eq!(parse_messages(prose).unwrap(), vec!["我要退货", "能退吗"]);
        assert_eq!(
            parse_messages("[\"a\", {\"text\": \"b\"}]").unwrap(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn bad_labels_say_what_is_wrong() {
        let t = task();
        let e = parse_label(&t, "{\"intent\": \"shipping\", \"confidence\": 1}").unwrap_err();
        assert!(e.contains("`shipping` is not one of the intents"), "{e}");
        assert!(parse_label(&t, "退货").unwrap_err().contains("not JSON"));
        let l = parse_label(&t, "{\"intent\": \" 退货 \", \"confidence\": \"85%\"}").unwrap();
        assert_eq!(
            (l.intent.as_str(), l.confidence, l.reason),
            ("退货", Some(0.85), None)
        );
        let l = parse_label(&t, "{\"intent\": \"其他\", \"confidence\": 7}").unwrap();
        assert_eq!(l.confidence, Some(0.07));
        let l = parse_label(&t, "{\"intent\": \"其他\", \"confidence\": -3}").unwrap();
        assert_eq!(l.confidence, None);
    }

    #[test]
    fn intent_names_match_loosely_but_not_wrongly() {
        let t = task();
        assert_eq!(match_intent(&t, "\"退货\"。").as_deref(), Some("退货"));
        assert_eq!(match_intent(&t, "退货退款"), None);
    }

    #[test]
    fn prompts_carry_schema_language_and_variations() {
        let t = task();
        let mut rng = rand::rng();
        let variations: Vec<String> = (0..3).map(|_| variation(&mut rng)).collect();
        let messages = generate_messages(&t, "退货", None, &["这双鞋我想退了"], &variations);
        let user = &messages[1].content;
        assert!(user.contains("Simplified Chinese") && user.contains("exactly 3 strings"));
        assert!(!user.contains("mistakes"));
        let contrast = generate_messages(&t, "退货", Some("其他"), &[], &variations);
        assert!(
            contrast[1]
                .content
                .contains("mistakes messages of `退货` for `其他`")
        );
        assert!(user.contains("- 这双鞋我想退了") && user.contains("3. "));
        let label = &label_json_messages(&t, "我要退货")[1].content;
        assert!(label.contains("one of [\"退货\", \"其他\"]") && label.contains("`其他`"));
        assert_eq!(label_schema(&t)["properties"]["intent"]["enum"][1], "其他");
        assert_ne!(generate_prompt_hash(), label_prompt_hash(false));
        assert_ne!(label_prompt_hash(true), label_prompt_hash(false));
    }
}
