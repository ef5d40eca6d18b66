//! The work of the local teacher on one model: batched chat completion with sampling and
//! optional JSON-schema constraints, and scoring of candidate answers on a shared prompt
//! prefix. It runs on the teacher's worker thread; `lib.rs` feeds it requests.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use llguidance::Matcher;
use prompt2lora_core::{ChatMessage, ChatRequest, ChatResponse, ChoiceScores, Usage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::LocalError;
use crate::constraint::Grammars;
use crate::gguf::GgufFile;
use crate::model::{KvCache, Transformer};
use crate::sampling::{SamplingParams, sample};
use crate::template::ChatTemplate;
use crate::tokenizer::Vocab;

/// Prompt tokens run through the model per forward pass; bounds the attention scratch memory.
const PREFILL_CHUNK: usize = 512;
/// Candidate answers scored per forward pass.
const SCORE_CHUNK: usize = 16;

/// A loaded model with its tokenizer, chat template and the cache of the last prompt.
pub struct Engine {
    model: Transformer,
    vocab: Vocab,
    template: ChatTemplate,
    /// The token that closes an assistant turn in this model's chat format.
    end_of_turn: u32,
    /// Built on the first request with a JSON schema.
    grammars: Option<Grammars>,
    /// The last prompt run and its keys/values: a new prompt that starts the same way (the
    /// same instructions for another message) only runs its new tail.
    prompt_cache: Option<(Vec<u32>, KvCache)>,
    rng: StdRng,
}

/// One sequence being generated.
struct Sequence {
    request: usize,
    params: SamplingParams,
    rng: StdRng,
    matcher: Option<Matcher>,
    generated: Vec<u32>,
    max_tokens: usize,
    prompt_tokens: usize,
}

enum Step {
    Continue(u32),
    Done,
}

impl Engine {
    pub fn load(path: &Path, seed: u64) -> Result<Self, LocalError> {
        let started = Instant::now();
        let mut gguf = GgufFile::open(path)?;
        let vocab = Vocab::load(&gguf)?;
        let template = ChatTemplate::new(
            gguf.opt_string("tokenizer.chat_template")?,
            vocab.bos_token.as_deref(),
            &vocab.eos_token,
        )?;
        let suffix = vocab.encode(&template.answer_suffix()?)?;
        let end_of_turn = suffix.first().copied().unwrap_or(vocab.eos_id);
        // With candle's `cuda` feature (this crate's `cuda`) the first GPU is used when there
        // is one. TODO: the GPU path has not been run yet; run the tests on a GPU machine.
        let device = Device::cuda_if_available(0)?;
        let model = Transformer::load(&mut gguf, &device)?;
        tracing::debug!(
            path = %path.display(),
            architecture = model.config.architecture,
            layers = model.config.n_layer,
            seconds = started.elapsed().as_secs_f32(),
            "loaded the local teacher"
        );
        Ok(Engine {
            model,
            vocab,
            template,
            end_of_turn,
            grammars: None,
            prompt_cache: None,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    /// The prompt tokens for `messages`, ending where the assistant's answer starts.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        self.vocab.encode(&self.template.render(messages, true)?)
    }

    /// Runs a prompt (reusing the cached part it shares with the previous prompt) and returns
    /// its cache and the final hidden state of its last token `(1, n_embd)`.
    fn prefill(&mut self, prompt: &[u32]) -> Result<(KvCache, Tensor), LocalError> {
        if prompt.is_empty() {
            return Err(LocalError::Internal("empty prompt".into()));
        }
        let (mut cache, mut done) = match self.prompt_cache.take() {
            Some((tokens, mut cache)) => {
                let shared = tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                // At least the last prompt token must run, to get its hidden state.
                let keep = shared.min(prompt.len() - 1);
                cache.truncate(keep)?;
                (cache, keep)
            }
            None => (KvCache::new(&self.model.config, 1), 0),
        };
        let reused = done;
        let started = Instant::now();
        let mut last = None;
        while done < prompt.len() {
            let end = (done + PREFILL_CHUNK).min(prompt.len());
            let hidden = self
                .model
                .forward(&[prompt[done..end].to_vec()], &mut cache)?;
            last = Some(hidden.narrow(1, end - done - 1, 1)?.squeeze(1)?);
            done = end;
        }
        tracing::trace!(
            tokens = prompt.len() - reused,
            reused,
            seconds = started.elapsed().as_secs_f32(),
            "prompt processed"
        );
        self.prompt_cache = Some((prompt.to_vec(), cache.clone()));
        let last = last.ok_or_else(|| LocalError::Internal("nothing was run".into()))?;
        Ok((cache, last))
    }

    /// Completes several chats together: each prompt is run on its own (reusing the shared
    /// prefix of the one before), then all answers are decoded in one batch, one token per
    /// sequence per forward pass.
    pub fn chat_batch(
        &mut self,
        requests: &[ChatRequest],
    ) -> Vec<Result<ChatResponse, LocalError>> {
        let mut results: Vec<Option<Result<ChatResponse, LocalError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut sequences = Vec::new();
        let mut caches = Vec::new();
        let mut hiddens = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            match self.start(index, request) {
                Ok((sequence, cache, hidden)) => {
                    sequences.push(sequence);
                    caches.push(cache);
                    hiddens.push(hidden);
                }
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        if !sequences.is_empty() {
            let decoded = self.decode(&mut sequences, &caches, &hiddens, &mut results);
            if let Err(e) = decoded {
                for sequence in &sequences {
                    results[sequence.request] = Some(Err(e.clone()));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LocalError::Internal("request not answered".into()))))
            .collect()
    }

    fn start(
        &mut self,
        index: usize,
        request: &ChatRequest,
    ) -> Result<(Sequence, KvCache, Tensor), LocalError> {
        let prompt = self.encode_chat(&request.messages)?;
        let room = self
            .model
            .config
            .context_length
            .saturating_sub(prompt.len());
        if room == 0 {
            return Err(LocalError::ContextOverflow {
                tokens: prompt.len(),
                limit: self.model.config.context_length,
            });
        }
        let matcher = match &request.json_schema {
            Some(schema) => Some(self.grammars()?.json_schema(schema)?),
            None => None,
        };
        let seed = request.seed.unwrap_or_else(|| self.rng.random());
        let (cache, hidden) = self.prefill(&prompt)?;
        let sequence = Sequence {
            request: index,
            params: SamplingParams {
                temperature: request.temperature,
                top_p: request.top_p,
            },
            rng: StdRng::seed_from_u64(seed),
            matcher,
            generated: Vec::new(),
            max_tokens: (request.max_tokens as usize).min(room).max(1),
            prompt_tokens: prompt.len(),
        };
        Ok((sequence, cache, hidden))
    }

    fn grammars(&mut self) -> Result<&Grammars, LocalError> {
        if self.grammars.is_none() {
            let started = Instant::now();
            self.grammars = Some(Grammars::new(&self.vocab, self.end_of_turn)?);
            tracing::debug!(
                seconds = started.elapsed().as_secs_f32(),
                "built the token trie"
            );
        }
        Ok(self.grammars.as_ref().expect("set above"))
    }

    /// The batched decoding loop; finished sequences leave the batch as they finish.
    fn decode(
        &mut self,
        sequences: &mut Vec<Sequence>,
        caches: &[KvCache],
        hiddens: &[Tensor],
        results: &mut [Option<Result<ChatResponse, LocalError>>],
    ) -> Result<(), LocalError> {
        let mut cache = KvCache::stack(caches)?;
        let mut logits = self.model.logits(&Tensor::cat(hiddens, 0)?)?;
        let started = Instant::now();
        let mut steps = 0usize;
        loop {
            let rows = logits.to_vec2::<f32>()?;
            let mut next = Vec::with_capacity(sequences.len());
            let mut keep = Vec::with_capacity(sequences.len());
            for (row, (i, sequence)) in rows.iter().zip(sequences.iter_mut().enumerate()) {
                match self.step(sequence, row) {
                    Ok(Step::Continue(token)) => {
                        next.push(vec![token]);
                        keep.push(i);
                    }
                    Ok(Step::Done) => {
                        results[sequence.request] = Some(self.response(sequence));
                    }
                    Err(e) => results[sequence.request] = Some(Err(e)),
                }
            }
            if keep.len() < sequences.len() {
                let mut index = 0;
                sequences.retain(|_| {
                    index += 1;
                    keep.contains(&(index - 1))
                });
                if sequences.is_empty() {
                    break;
                }
                cache = cache.select(&keep)?;
            }
            let hidden = self.model.forward(&next, &mut cache)?;
            logits = self.model.logits(&hidden.squeeze(1)?)?;
            steps += 1;
        }
        tracing::trace!(
            steps,
            seconds = started.elapsed().as_secs_f32(),
            "decoded a batch"
        );
        Ok(())
    }

    // TODO: tokens that a JSON schema forces (such as `{"intent": "`) are decoded one forward
    // pass each; running them in one pass, as llguidance's fast-forward tokens allow, would
    // save several decoding steps per constrained answer.
    fn step(&self, sequence: &mut Sequence, logits: &[f32]) -> Result<Step, LocalError> {
        let limit = self.vocab.size.min(logits.len());
        let token = match &mut sequence.matcher {
            Some(matcher) => {
                let mask = matcher.compute_mask_or_eos().map_err(constraint_error)?;
                sample(
                    logits,
                    |id| id < limit && mask.is_allowed(id as u32),
                    sequence.params,
                    &mut sequence.rng,
                )
            }
            None => sample(logits, |id| id < limit, sequence.params, &mut sequence.rng),
        };
        let Some(token) = token else {
            return Err(LocalError::Constraint(
                "no token can continue the answer".into(),
            ));
        };
        if token == self.end_of_turn || self.vocab.is_stop(token) {
            return Ok(Step::Done);
        }
        sequence.generated.push(token);
        if let Some(matcher) = &mut sequence.matcher {
            matcher.consume_token(token).map_err(constraint_error)?;
            if matcher.is_stopped() {
                return Ok(Step::Done);
            }
        }
        if sequence.generated.len() >= sequence.max_tokens {
            return Ok(Step::Done);
        }
        Ok(Step::Continue(token))
    }

    fn response(&self, sequence: &Sequence) -> Result<ChatResponse, LocalError> {
        Ok(ChatResponse {
            text: self.vocab.decode(&sequence.generated)?,
            usage: Usage {
                prompt_tokens: sequence.prompt_tokens as u64,
                completion_tokens: sequence.generated.len() as u64,
            },
        })
    }

    /// Log-probability of each choice, followed by the end of the turn, as the assistant's
    /// answer to `messages`. The prompt runs once; its cache is forked for the choices, which
    /// run together in batches.
    pub fn score_choices(
        &mut self,
        messages: &[ChatMessage],
        choices: &[String],
    ) -> Result<ChoiceScores, LocalError> {
        let prompt = self.encode_chat(messages)?;
        let (cache, hidden) = self.prefill(&prompt)?;
        let first = self
            .model
            .log_probs(&hidden)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let continuations = choices
            .iter()
            .map(|choice| {
                let mut ids = self.vocab.encode(choice)?;
                ids.push(self.end_of_turn);
                Ok(ids)
            })
            .collect::<Result<Vec<_>, LocalError>>()?;
        let mut logprobs: Vec<f64> = continuations
            .iter()
            .map(|ids| f64::from(first[ids[0] as usize]))
            .collect();
        for (chunk_index, chunk) in continuations.chunks(SCORE_CHUNK).enumerate() {
            let rest = self.score_rest(&cache, chunk)?;
            for (i, value) in rest.into_iter().enumerate() {
                logprobs[chunk_index * SCORE_CHUNK + i] += value;
            }
        }
        let choice_tokens: usize = continuations.iter().map(Vec::len).sum();
        Ok(ChoiceScores {
            logprobs,
            usage: Usage {
                prompt_tokens: (prompt.len() + choice_tokens) as u64,
                completion_tokens: 0,
            },
        })
    }

    /// Log-probability of every token after the first of each continuation, all continuations
    /// run as one right-padded batch on copies of the prompt's cache.
    fn score_rest(
        &self,
        cache: &KvCache,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<f64>, LocalError> {
        let width = continuations.iter().map(|c| c.len() - 1).max().unwrap_or(0);
        if width == 0 {
            return Ok(vec![0.0; continuations.len()]);
        }
        // Row r feeds tokens 0..len-1 and is scored on tokens 1..len; padding sits after the
        // real tokens, where the causal mask keeps it from changing them.
        let rows: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| {
                let mut row = c[..c.len() - 1].to_vec();
                row.resize(width, self.end_of_turn);
                row
            })
            .collect();
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (r, c) in continuations.iter().enumerate() {
            for j in 0..c.len() - 1 {
                positions.push((r * width + j) as u32);
                targets.push(c[j + 1]);
            }
        }
        let mut forked = cache.select(&vec![0; rows.len()])?;
        let hidden = self.model.forward(&rows, &mut forked)?;
        let n_embd = self.model.config.n_embd;
        let hidden = hidden.reshape((rows.len() * width, n_embd))?;
        let device = hidden.device().clone();
        let hidden = hidden.index_select(&Tensor::new(positions, &device)?, 0)?;
        let targets_t = Tensor::new(targets.as_slice(), &device)?.unsqueeze(1)?;
        let picked = self
            .model
            .log_probs(&hidden)?
            .gather(&targets_t, 1)?
            .squeeze(1)?;
        let picked = picked.to_vec1::<f32>()?;
        let mut sums = vec![0.0f64; continuations.len()];
        let mut k = 0;
        for (r, c) in continuations.iter().enumerate() {
            for _ in 0..c.len() - 1 {
                sums[r] += f64::from(picked[k]);
                k += 1;
            }
        }
        Ok(sums)
    }
}

fn constraint_error(e: impl std::fmt::Display) -> LocalError {
    LocalError::Constraint(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_tiny_model;

    fn engine(architecture: &str) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_model(&path, architecture, "qwen2");
        (dir, Engine::load(&path, 3).unwrap())
    }

    fn request(max_tokens: u32, temperature: f32, seed: Option<u64>) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::user("hello world")],
            temperature,
            top_p: 0.9,
            max_tokens,
            json_schema: None,
            seed,
        }
    }

    #[test]
    fn batched_chats_equal_chats_run_alone() {
        let (_dir, mut engine) = engine("qwen2");
        let mut requests = vec![request(12, 0.0, None), request(5, 0.8, Some(11))];
        requests[1]
            .messages
            .insert(0, ChatMessage::system("a longer system prompt here"));
        requests.push(request(9, 1.0, Some(4)));
        let together = engine.chat_batch(&requests);
        for (request, batched) in requests.iter().zip(&together) {
            let alone = engine
                .chat_batch(std::slice::from_ref(request))
                .remove(0)
                .unwrap();
            let batched = batched.as_ref().unwrap();
            assert_eq!(batched.text, alone.text);
            assert_eq!(batched.usage, alone.usage);
            assert!(batched.usage.completion_tokens <= u64::from(request.max_tokens));
        }
    }

    #[test]
    fn json_schema_constrains_a_random_model() {
        let (_dir, mut engine) = engine("llama");
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"intent": {"enum": ["refund", "greeting"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["intent", "n"],
            "additionalProperties": false
        });
        for seed in 0..3 {
            let mut req = request(60, 1.0, Some(seed));
            req.json_schema = Some(schema.clone());
            let answer = engine.chat_batch(&[req]).remove(0).unwrap();
            let value: serde_json::Value = serde_json::from_str(&answer.text)
                .unwrap_or_else(|e| panic!("{e}: {:?}", answer.text));
            let intent = value["intent"].as_str().unwrap();
            assert!(["refund", "greeting"].contains(&intent), "{value}");
            assert!(value["n"].as_u64().is_some_and(|n| n <= 99), "{value}");
            assert!(
                answer.text.starts_with("{\"intent\": \""),
                "{:?}",
                answer.text
            );
        }
        let mut bad = request(10, 0.0, None);
        bad.json_schema = Some(serde_json::json!("not a schema"));
        assert!(matches!(
            engine.chat_batch(&[bad]).remove(0),
            Err(LocalError::Constraint(_))
        ));
    }

    #[test]
    fn choice_scores_equal_log_probs_of_full_sequences() {
        let (_dir, mut engine) = engine("qwen2");
        let messages = [
            ChatMessage::system("label it"),
            ChatMessage::user("hello world"),
        ];
        let choices: Vec<String> = ["hello", "world", "he", "xyz hello"]
            .map(String::from)
            .to_vec();
        // Run the cache-reusing scorer twice: the second call reuses the whole prompt.
        let scores = engine.score_choices(&messages, &choices).unwrap();
        let again = engine.score_choices(&messages, &choices).unwrap();
        let prompt = engine.encode_chat(&messages).unwrap();
        for (i, choice) in choices.iter().enumerate() {
            let mut ids = engine.vocab.encode(choice).unwrap();
            ids.push(engine.end_of_turn);
            let mut full = prompt.clone();
            full.extend(&ids);
            let mut cache = KvCache::new(&engine.model.config, 1);
            let hidden = engine
                .model
                .forward(&[full.clone()], &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let log_probs = engine
                .model
                .log_probs(&hidden)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let expected: f64 = (0..ids.len())
                .map(|j| f64::from(log_probs[prompt.len() - 1 + j][ids[j] as usize]))
                .sum();
            assert!(
                (scores.logprobs[i] - expected).abs() < 1e-3,
                "{choice}: {} vs {expected}",
                scores.logprobs[i]
            );
            assert!((again.logprobs[i] - expected).abs() < 1e-3);
        }
        assert!(scores.usage.prompt_tokens > prompt.len() as u64);
    }

    #[test]
    fn prompts_longer_than_the_context_fail_cleanly() {
        let (_dir, mut engine) = engine("llama");
        let mut req = request(4, 0.0, None);
        req.messages = vec![ChatMessage::user("hello ".repeat(400))];
        let result = engine.chat_batch(&[req, request(3, 0.0, None)]);
        assert!(
            matches!(result[0], Err(LocalError::ContextOverflow { .. })),
            "{:?}",
            result[0]
        );
        assert!(result[1].is_ok());
    }
}
