//! Labelling: one message to one intent of the task, with the three confidence signals the
//! filter ranks by (verbalised confidence, intent probability from log-probabilities, and
//! agreement over sampled labels). Used by generate and by `eval --teacher`.

use prompt2lora_core::teacher::ChoiceScores;
use prompt2lora_core::{
    ChatMessage, ChatRequest, Task, Teacher, TeacherError, TokenLogprob, Usage,
};

use crate::prompts;

/// How a message is labelled; see `teacher.label_method` in the task file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelMethod {
    /// `Score` where the teacher scores answers, otherwise `Json`.
    #[default]
    Auto,
    /// The log-probability of each intent name as the answer: intent and `label_logprob`.
    Score,
    /// An `{intent, confidence, reason}` answer; `label_logprob` from the intent's tokens where
    /// the teacher reports log-probabilities.
    Json,
    /// `Score` for the intent and its probability, plus `Json` for confidence and reason.
    Both,
}

impl std::str::FromStr for LabelMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LabelMethod::Auto),
            "score" => Ok(LabelMethod::Score),
            "json" => Ok(LabelMethod::Json),
            "both" => Ok(LabelMethod::Both),
            _ => Err(format!(
                "`{s}` is not a label method: use auto, score, json or both"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabelOptions {
    pub method: LabelMethod,
    /// Extra labels sampled for the `agreement` signal; below 2 there is no agreement.
    pub self_consistency: usize,
    /// Temperature of those samples.
    pub vote_temperature: f32,
    /// Alternatives per token asked for with log-probabilities.
    pub top_logprobs: usize,
    pub seed: Option<u64>,
    /// Divide scored labels by the teacher's prior over the intents (contextual calibration;
    /// see [`content_free_prior`]). [`LabelOptions::prepare`] measures the prior.
    pub calibrate: bool,
    /// The prior once measured; `None` leaves the scores as they are.
    pub prior: Option<Vec<f64>>,
}

impl Default for LabelOptions {
    fn default() -> Self {
        LabelOptions {
            method: LabelMethod::Auto,
            self_consistency: 1,
            vote_temperature: 0.7,
            top_logprobs: 20,
            seed: None,
            calibrate: true,
            prior: None,
        }
    }
}

impl LabelOptions {
    /// The labelling keys of a task's `[teacher]` section.
    pub fn from_task(task: &Task) -> Result<Self, String> {
        Ok(LabelOptions {
            method: task.teacher.label_method.parse()?,
            self_consistency: task.teacher.self_consistency,
            calibrate: task.teacher.calibrate,
            ..LabelOptions::default()
        })
    }

    /// Whether labels are calibrated: scored (not JSON) labels with `calibrate` on.
    pub fn calibrated(&self) -> bool {
        self.calibrate && self.method != LabelMethod::Json
    }

    /// Measures what labelling needs before the first message: the teacher's prior, when
    /// labels are calibrated and the teacher scores answers. Returns the tokens of its
    /// [`PRIOR_REQUESTS`] requests, or `None` when nothing was measured.
    pub async fn prepare(
        &mut self,
        teacher: &dyn Teacher,
        task: &Task,
    ) -> Result<Option<Usage>, TeacherError> {
        if !self.calibrated() || self.prior.is_some() {
            return Ok(None);
        }
        match content_free_prior(teacher, task).await {
            Ok((prior, usage)) => {
                let top = prior
                    .iter()
                    .zip(task.intent_names())
                    .max_by(|a, b| a.0.total_cmp(b.0))
                    .map(|(p, name)| format!("{name} {p:.3}"))
                    .unwrap_or_default();
                tracing::info!("teacher prior measured for calibration (most favoured: {top})");
                self.prior = Some(prior);
                Ok(Some(usage))
            }
            // A teacher that cannot score labels by JSON, where there is nothing to calibrate.
            Err(TeacherError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The provenance id of labels made with these options: the prompt's hash, calibration
    /// included, so that cached labels of other settings are not reused.
    pub fn prompt_id(&self) -> String {
        prompts::label_prompt_hash(self.calibrated())
    }
}

/// A teacher's label for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub intent: String,
    /// Confidence as the teacher wrote it.
    pub confidence: Option<f64>,
    /// Probability of `intent` among the task's intents, from log-probabilities.
    pub label_logprob: Option<f64>,
    /// Share of the sampled labels that chose `intent`.
    pub agreement: Option<f64>,
    pub reason: Option<String>,
    /// Tokens of every request made for this label.
    pub usage: Usage,
    /// Requests made, repairs and votes included.
    pub requests: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    /// The teacher's answer did not name an intent, even after a repair request.
    #[error("unusable label answer ({problem}): {answer}")]
    Invalid { problem: String, answer: String },
}

/// Labels `text` with one of the task's intents.
pub async fn label_text(
    teacher: &dyn Teacher,
    task: &Task,
    text: &str,
    options: &LabelOptions,
) -> Result<Label, LabelError> {
    // Votes ask for the bare intent name where the teacher scores names, else for JSON.
    let mut by_name = true;
    let mut label = match options.method {
        LabelMethod::Json => {
            by_name = false;
            label_by_json(teacher, task, text, options).await?
        }
        LabelMethod::Score => label_by_score(teacher, task, text, options).await?,
        LabelMethod::Auto => match label_by_score(teacher, task, text, options).await {
            Err(LabelError::Teacher(TeacherError::Unsupported(_))) => {
                by_name = false;
                label_by_json(teacher, task, text, options).await?
            }
            other => other?,
        },
        LabelMethod::Both => {
            let mut scored = label_by_score(teacher, task, text, options).await?;
            let told = label_by_json(teacher, task, text, options).await?;
            // The verbalised confidence is about the intent the teacher wrote; it only backs
            // the scored intent when the two agree.
            if told.intent == scored.intent {
                scored.confidence = told.confidence;
            }
            scored.reason = told.reason;
            scored.usage += told.usage;
            scored.requests += told.requests;
            scored
        }
    };
    if options.self_consistency >= 2 {
        let votes = vote(teacher, task, text, options, by_name).await;
        let mut agree = 0;
        for vote in &votes {
            if let Ok((intent, usage)) = vote {
                label.usage += *usage;
                agree += usize::from(*intent == label.intent);
            }
            label.requests += 1;
        }
        label.agreement = Some(agree as f64 / votes.len() as f64);
    }
    Ok(label)
}

async fn label_by_score(
    teacher: &dyn Teacher,
    task: &Task,
    text: &str,
    options: &LabelOptions,
) -> Result<Label, LabelError> {
    let names = task.intent_names();
    let messages = prompts::label_name_messages(task, text);
    let ChoiceScores { logprobs, usage } = teacher.score_choices(&messages, &names).await?;
    let probs = calibrated(&logprobs, options.prior.as_deref());
    let best = (0..names.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .expect("two intents or more");
    Ok(Label {
        intent: names[best].clone(),
        confidence: None,
        label_logprob: Some(probs[best]),
        agreement: None,
        reason: None,
        usage,
        requests: 1,
    })
}

async fn label_by_json(
    teacher: &dyn Teacher,
    task: &Task,
    text: &str,
    options: &LabelOptions,
) -> Result<Label, LabelError> {
    let mut messages = prompts::label_json_messages(task, text);
    let mut usage = Usage::default();
    for requests in 1..=2 {
        let request = json_request(task, messages.clone(), 0.0, options.seed);
        let answer = teacher
            .chat_with_logprobs(&request, options.top_logprobs)
            .await?;
        usage += answer.response.usage;
        let problem = match prompts::parse_label(task, &answer.response.text) {
            Ok(parsed) => {
                let label_logprob = answer.tokens.as_deref().and_then(|tokens| {
                    intent_probability(tokens, &task.intent_names(), &parsed.intent)
                });
                return Ok(Label {
                    intent: parsed.intent,
                    confidence: parsed.confidence,
                    label_logprob,
                    agreement: None,
                    reason: parsed.reason,
                    usage,
                    requests,
                });
            }
            Err(problem) => problem,
        };
        if requests == 2 {
            return Err(LabelError::Invalid {
                problem,
                answer: answer.response.text,
            });
        }
        tracing::debug!("label answer unusable ({problem}); asking once more");
        messages = prompts::repair_messages(messages, &answer.response.text, &problem);
    }
    unreachable!("the loop returns on its second pass")
}

fn json_request(
    task: &Task,
    messages: Vec<ChatMessage>,
    temperature: f32,
    seed: Option<u64>,
) -> ChatRequest {
    ChatRequest {
        messages,
        temperature,
        top_p: 1.0,
        max_tokens: 160,
        json_schema: Some(prompts::label_schema(task)),
        seed,
    }
}

/// `self_consistency` labels drawn at the vote temperature, each an intent or an unusable
/// answer (which counts as disagreement).
async fn vote(
    teacher: &dyn Teacher,
    task: &Task,
    text: &str,
    options: &LabelOptions,
    by_name: bool,
) -> Vec<Result<(String, Usage), LabelError>> {
    let requests = (0..options.self_consistency).map(|i| {
        let seed = options.seed.map(|s| s.wrapping_add(1 + i as u64));
        async move {
            if by_name {
                let request = ChatRequest {
                    messages: prompts::label_name_messages(task, text),
                    temperature: options.vote_temperature,
                    top_p: 1.0,
                    max_tokens: 32,
                    json_schema: None,
                    seed,
                };
                let answer = teacher.chat(&request).await?;
                let intent = prompts::match_intent(task, &answer.text).ok_or_else(|| {
                    LabelError::Invalid {
                        problem: "not an intent name".into(),
                        answer: answer.text.clone(),
                    }
                })?;
                Ok::<_, LabelError>((intent, answer.usage))
            } else {
                let messages = prompts::label_json_messages(task, text);
                let request = json_request(task, messages, options.vote_temperature, seed);
                let answer = teacher.chat(&request).await?;
                let parsed = prompts::parse_label(task, &answer.text).map_err(|problem| {
                    LabelError::Invalid {
                        problem,
                        answer: answer.text.clone(),
                    }
                })?;
                Ok((parsed.intent, answer.usage))
            }
        }
    });
    futures::future::join_all(requests).await
}

/// Messages that say nothing: how a teacher scores the intents for them is its prior, the
/// bias it brings to every message (short or common names, the catch-all).
const CONTENT_FREE: [&str; 3] = ["N/A", "", "[MASK]"];

/// Requests [`content_free_prior`] makes.
pub const PRIOR_REQUESTS: u64 = CONTENT_FREE.len() as u64;

/// The teacher's prior over the task's intents: the mean of the intent probabilities it gives
/// to content-free messages, as in contextual calibration ("Calibrate Before Use", Zhao et al.,
/// 2021). Dividing each scored label's probabilities by it, then normalising, removes a bias
/// toward names the teacher prefers whatever the message says. Returns the usage of the
/// scoring requests with it; fails with [`TeacherError::Unsupported`] where the teacher cannot
/// score answers.
pub async fn content_free_prior(
    teacher: &dyn Teacher,
    task: &Task,
) -> Result<(Vec<f64>, Usage), TeacherError> {
    let names = task.intent_names();
    let mut prior = vec![0.0; names.len()];
    let mut usage = Usage::default();
    for text in CONTENT_FREE {
        let messages = prompts::label_name_messages(task, text);
        let scores = teacher.score_choices(&messages, &names).await?;
        usage += scores.usage;
        for (p, q) in prior.iter_mut().zip(softmax(&scores.logprobs)) {
            *p += q / CONTENT_FREE.len() as f64;
        }
    }
    Ok((prior, usage))
}

/// Probabilities from scored log-probabilities, divided by `prior` when there is one.
pub fn calibrated(logprobs: &[f64], prior: Option<&[f64]>) -> Vec<f64> {
    match prior {
        Some(prior) if prior.len() == logprobs.len() => {
            let adjusted: Vec<f64> = logprobs
                .iter()
                .zip(prior)
                .map(|(lp, p)| lp - p.max(1e-12).ln())
                .collect();
            softmax(&adjusted)
        }
        _ => softmax(logprobs),
    }
}

/// Normalised probabilities from log-probabilities.
pub fn softmax(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![1.0 / logprobs.len() as f64; logprobs.len()];
    }
    let exps: Vec<f64> = logprobs.iter().map(|lp| (lp - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// The probability of `chosen` among `names` at the place where the answer's JSON writes the
/// intent's value, from the answer tokens' log-probabilities.
///
/// Each name is followed along the generated tokens; where it leaves them, the best listed
/// alternative token that continues it counts, and the rest of the name is taken as certain
/// (most intents part ways at their first token, where this is exact). A name missing from a
/// non-empty alternatives list gets the list's lowest log-probability, an upper bound. When
/// the endpoint lists no alternatives, the probability of the chosen name's own tokens is
/// returned unnormalised.
pub fn intent_probability(tokens: &[TokenLogprob], names: &[String], chosen: &str) -> Option<f64> {
    let text: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.bytes.iter().copied())
        .collect();
    let start = value_start(&text, b"\"intent\"")?;
    let (mut index, mut offset) = (0, start);
    while offset >= tokens.get(index)?.bytes.len() {
        offset -= tokens[index].bytes.len();
        index += 1;
    }
    let json_value = |name: &str| {
        let quoted = serde_json::to_string(name).expect("strings serialise");
        quoted.as_bytes()[1..].to_vec() // the value and its closing quote, without the opening one
    };
    let scores: Vec<Option<f64>> = names
        .iter()
        .map(|n| score_along(tokens, index, offset, &json_value(n)))
        .collect();
    let chosen_at = names.iter().position(|n| n == chosen)?;
    let own = scores[chosen_at]?;
    if scores.iter().all(Option::is_some) {
        let logprobs: Vec<f64> = scores.iter().map(|s| s.expect("checked")).collect();
        return Some(softmax(&logprobs)[chosen_at]);
    }
    Some(own.exp())
}

/// Byte offset where the string value of `key` starts (after its opening quote).
fn value_start(text: &[u8], key: &[u8]) -> Option<usize> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut rest = text[at..]
        .iter()
        .enumerate()
        .skip_while(|(_, b)| b.is_ascii_whitespace());
    let (_, &colon) = rest.next()?;
    if colon != b':' {
        return None;
    }
    let mut rest = rest.skip_while(|(_, b)| b.is_ascii_whitespace());
    let (quote_at, &quote) = rest.next()?;
    (quote == b'"').then_some(at + quote_at + 1)
}

/// Log-probability of the answer continuing with `choice` from byte `offset` of token `index`.
fn score_along(tokens: &[TokenLogprob], index: usize, offset: usize, choice: &[u8]) -> Option<f64> {
    let mut rest = choice;
    let mut total = 0.0;
    for (i, token) in tokens.iter().enumerate().skip(index) {
        if rest.is_empty() {
            break;
        }
        let lead: &[u8] = if i == index {
            &token.bytes[..offset]
        } else {
            &[]
        };
        let consumed = |candidate: &[u8]| -> Option<usize> {
            let body = candidate.strip_prefix(lead).filter(|b| !b.is_empty())?;
            if rest.starts_with(body) {
                Some(body.len())
            } else {
                body.starts_with(rest).then_some(rest.len())
            }
        };
        if let Some(n) = consumed(&token.bytes) {
            total += token.logprob;
            rest = &rest[n..];
            continue;
        }
        let best = token
            .top
            .iter()
            .filter(|(t, _)| consumed(t).is_some())
            .map(|(_, lp)| *lp)
            .reduce(f64::max);
        let floor = token.top.iter().map(|(_, lp)| *lp).reduce(f64::min);
        return best.or(floor).map(|lp| total + lp);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, logprob: f64, top: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            bytes: text.as_bytes().to_vec(),
            logprob,
            top: top
                .iter()
                .map(|(t, lp)| (t.as_bytes().to_vec(), *lp))
                .collect(),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn probability_comes_from_the_intent_position() {
        // {"intent": "refund", ...} with the value split over tokens `{"`, `intent`, `":`, ` "`,
        // `ref`, `und`, `",`
        let tokens = vec![
            token("{\"", 0.0, &[]),
            token("intent", 0.0, &[]),
            token("\":", 0.0, &[]),
            token(" \"", 0.0, &[]),
            token(
                "ref",
                (0.7f64).ln(),
                &[
                    ("ref", (0.7f64).ln()),
                    ("ship", (0.2f64).ln()),
                    ("other", (0.05f64).ln()),
                ],
            ),
            token("und", 0.0, &[]),
            token("\",", 0.0, &[]),
        ];
        let p = intent_probability(&tokens, &names(&["refund", "shipping", "other"]), "refund")
            .unwrap();
        assert!((p - 0.7 / 0.95).abs() < 1e-9, "{p}");
        // A name missing from the alternatives gets the lowest listed log-probability.
        let p = intent_probability(&tokens, &names(&["refund", "invoice"]), "refund").unwrap();
        assert!((p - 0.7 / 0.75).abs() < 1e-9, "{p}");
    }

    #[test]
    fn value_may_start_inside_a_token_and_prefixes_are_told_apart() {
        // `": "re` carries the opening quote and the first letters.
        let tokens = vec![
            token("{\"intent", 0.0, &[]),
            token(
                "\": \"re",
                (0.5f64).ln(),
                &[("\": \"re", (0.5f64).ln()), ("\": \"sh", (0.5f64).ln())],
            ),
            token(
                "fund",
                (0.8f64).ln(),
                &[("fund", (0.8f64).ln()), ("fund_status", (0.2f64).ln())],
            ),
            token(
                "\"}",
                (0.9f64).ln(),
                &[("\"}", (0.9f64).ln()), ("_status", (0.1f64).ln())],
            ),
        ];
        // refund 0.5 * 0.8 * 0.9, refund_status 0.5 * 0.8 * 0.1, shipping 0.5 (then certain).
        let all = names(&["refund", "refund_status", "shipping"]);
        let p = intent_probability(&tokens, &all, "refund").unwrap();
        assert!((p - 0.36 / 0.9).abs() < 1e-9, "{p}");
        let p = intent_probability(&tokens, &all, "refund_status").unwrap();
        assert!((p - 0.04 / 0.9).abs() < 1e-9, "{p}");
    }

    #[test]
    fn without_alternatives_the_own_probability_is_returned() {
        let tokens = vec![
            token("{\"intent\": \"", 0.0, &[]),
            token("other", (0.6f64).ln(), &[]),
            token("\"}", 0.0, &[]),
        ];
        let p = intent_probability(&tokens, &names(&["refund", "other"]), "other").unwrap();
        assert!((p - 0.6).abs() < 1e-9);
        assert!(intent_probability(&tokens[1..], &names(&["other"]), "other").is_none());
    }

    #[test]
    fn softmax_is_normalised_and_safe() {
        let p = softmax(&[0.0, (0.5f64).ln()]);
        assert!((p[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(softmax(&[f64::NEG_INFINITY; 2]), vec![0.5, 0.5]);
    }

    /// Scores `shipping` at 0.6 and every other intent at 0.2, and answers chats with
    /// `shipping`.
    struct Scoring;

    #[async_trait::async_trait]
    impl Teacher for Scoring {
        fn model_id(&self) -> &str {
            "scoring"
        }

        async fn chat(
            &self,
            request: &ChatRequest,
        ) -> Result<prompt2lora_core::ChatResponse, TeacherError> {
            let last = &request.messages.last().unwrap().content;
            let text = match last.ends_with("intent name only.") {
                true => "shipping",
                false => r#"{"intent": "shipping", "confidence": 0.7, "reason": "asks where"}"#,
            };
            let usage = Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
            };
            Ok(prompt2lora_core::ChatResponse {
                text: text.into(),
                usage,
            })
        }

        async fn score_choices(
            &self,
            _: &[ChatMessage],
            choices: &[String],
        ) -> Result<ChoiceScores, TeacherError> {
            let logprobs = choices
                .iter()
                .map(|c| {
                    if c == "shipping" {
                        0.6f64.ln()
                    } else {
                        0.2f64.ln()
                    }
                })
                .collect();
            Ok(ChoiceScores {
                logprobs,
                usage: Usage {
                    prompt_tokens: 30,
                    completion_tokens: 0,
                },
            })
        }
    }

    fn task() -> Task {
        let source = r#"
name = "shop"
language = "en"
[[intents]]
name = "refund"
description = "Money back."
[[intents]]
name = "shipping"
description = "Where a parcel is."
[[intents]]
name = "other"
description = "Anything else."
"#;
        Task::parse(source, std::path::Path::new("t.toml")).unwrap()
    }

    #[tokio::test]
    async fn scoring_teachers_label_by_score_and_vote_by_name() {
        let options = LabelOptions {
            self_consistency: 2,
            ..LabelOptions::default()
        };
        let label = label_text(&Scoring, &task(), "where is it", &options)
            .await
            .unwrap();
        assert_eq!(label.intent, "shipping");
        assert!((label.label_logprob.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!((label.confidence, label.reason.as_deref()), (None, None));
        assert_eq!((label.agreement, label.requests), (Some(1.0), 3));
        assert_eq!(
            label.usage,
            Usage {
                prompt_tokens: 50,
                completion_tokens: 4
            }
        );

        let both = LabelOptions {
            method: LabelMethod::Both,
            ..LabelOptions::default()
        };
        let label = label_text(&Scoring, &task(), "where is it", &both)
            .await
            .unwrap();
        assert_eq!(
            (label.confidence, label.reason.as_deref()),
            (Some(0.7), Some("asks where"))
        );
        assert!((label.label_logprob.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(label.requests, 2);
    }

    /// Favours `other` whatever the message; for the one real message, `shipping` stands out
    /// only against that bias.
    struct Biased;

    #[async_trait::async_trait]
    impl Teacher for Biased {
        fn model_id(&self) -> &str {
            "biased"
        }

        async fn chat(
            &self,
            _: &ChatRequest,
        ) -> Result<prompt2lora_core::ChatResponse, TeacherError> {
            Err(TeacherError::Fatal("scores only".into()))
        }

        async fn score_choices(
            &self,
            messages: &[ChatMessage],
            choices: &[String],
        ) -> Result<ChoiceScores, TeacherError> {
            let real = messages.iter().any(|m| m.content.contains("where is it"));
            let probability = |choice: &str| -> f64 {
                match (real, choice) {
                    (true, "other") => 0.5,
                    (true, "shipping") => 0.4,
                    (false, "other") => 0.8,
                    _ => 0.1,
                }
            };
            Ok(ChoiceScores {
                logprobs: choices.iter().map(|c| probability(c).ln()).collect(),
                usage: Usage {
                    prompt_tokens: 30,
                    completion_tokens: 0,
                },
            })
        }
    }

    #[tokio::test]
    async fn calibration_divides_by_the_content_free_prior() {
        let (prior, usage) = content_free_prior(&Biased, &task()).await.unwrap();
        // Intents in task order: refund, shipping, other.
        for (p, expected) in prior.iter().zip([0.1, 0.1, 0.8]) {
            assert!((p - expected).abs() < 1e-12, "{prior:?}");
        }
        assert_eq!(usage.prompt_tokens, 30 * PRIOR_REQUESTS);

        let raw = LabelOptions {
            calibrate: false,
            ..LabelOptions::default()
        };
        let label = label_text(&Biased, &task(), "where is it", &raw)
            .await
            .unwrap();
        assert_eq!(label.intent, "other");

        let mut calibrated = LabelOptions::default();
        assert!(calibrated.calibrated());
        assert_ne!(calibrated.prompt_id(), raw.prompt_id());
        let usage = calibrated.prepare(&Biased, &task()).await.unwrap().unwrap();
        assert_eq!(usage.prompt_tokens, 30 * PRIOR_REQUESTS);
        let label = label_text(&Biased, &task(), "where is it", &calibrated)
            .await
            .unwrap();
        assert_eq!(label.intent, "shipping");
        // 0.4/0.1 against 0.1/0.1 and 0.5/0.8.
        let expected = 4.0 / (4.0 + 1.0 + 0.625);
        assert!((label.label_logprob.unwrap() - expected).abs() < 1e-9);
        // Prepared once: a second call measures nothing.
        let again = calibrated.prepare(&Biased, &task()).await.unwrap();
        assert_eq!(again, None);
    }

    /// A teacher without answer scoring, like most HTTP endpoints.
    struct JsonOnly;

    #[async_trait::async_trait]
    impl Teacher for JsonOnly {
        fn model_id(&self) -> &str {
            "json-only"
        }

        async fn chat(
            &self,
            _: &ChatRequest,
        ) -> Result<prompt2lora_core::ChatResponse, TeacherError> {
            Err(TeacherError::Fatal("not needed here".into()))
        }
    }

    #[tokio::test]
    async fn teachers_that_cannot_score_are_not_calibrated() {
        let mut options = LabelOptions::default();
        let usage = options.prepare(&JsonOnly, &task()).await.unwrap();
        assert_eq!((usage, options.prior.is_none()), (None, true));
    }

    #[test]
    fn methods_parse() {
        assert_eq!("both".parse::<LabelMethod>().unwrap(), LabelMethod::Both);
        assert!(
            "logprob"
                .parse::<LabelMethod>()
                .unwrap_err()
                .contains("auto, score, json or both")
        );
    }
}
