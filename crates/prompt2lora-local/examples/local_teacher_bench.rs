//! Benchmark of the local teacher: prompt processing and generation speed of the transformer
//! (batch 1 and batched), and labelling by choice scoring, on one GGUF file. Run by
//! `bench/local_teacher/run.sh`; results go to `bench/results/local-teacher.md`.
//!
//! Usage: local_teacher_bench MODEL.gguf [PROMPT_TOKENS] [GEN_TOKENS]
//! (threads: `CANDLE_NUM_THREADS`, default one per core)

use std::path::PathBuf;
use std::time::Instant;

use candle_core::IndexOp;
use prompt2lora_core::{ChatMessage, ChatRequest};
use prompt2lora_local::engine::Engine;
use prompt2lora_local::model::KvCache;

const INTENTS: [&str; 5] = ["refund", "delivery", "invoice", "complaint", "other"];
const MESSAGES: [&str; 6] = [
    "I want my money back for the broken kettle.",
    "Where is my parcel? It was due on Monday.",
    "Please send me a VAT invoice for order 5531.",
    "你们的客服态度太差了，我要投诉。",
    "Do you also sell garden furniture?",
    "我的快递三天了还没到，帮我查一下。",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = PathBuf::from(args.get(1).ok_or("usage: local_teacher_bench MODEL.gguf")?);
    let prompt_tokens: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let gen_tokens: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;

    let started = Instant::now();
    let mut engine = Engine::load(&path, 0)?;
    println!("load_s\t{:.2}", started.elapsed().as_secs_f64());

    // Prompt processing: a fresh cache, one pass over a prompt of real text.
    let text = "The customer writes about an order, a delivery or an invoice. ".repeat(40);
    let mut prompt = engine.vocab().encode(&text)?;
    prompt.truncate(prompt_tokens);
    let model = engine.model();
    let _warm = model.forward(&[prompt[..8].to_vec()], &mut KvCache::new(&model.config, 1))?;
    let mut cache = KvCache::new(&model.config, 1);
    let started = Instant::now();
    let hidden = model.forward(&[prompt.clone()], &mut cache)?;
    let mut logits = model.logits(&hidden.i((.., prompt.len() - 1, ..))?)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "prompt_tok_s\t{:.1}\t({} tokens in {seconds:.2} s)",
        prompt.len() as f64 / seconds,
        prompt.len()
    );

    // Generation, batch 1 then batched: greedy tokens fed back one at a time.
    for batch in [1usize, 2, 4, 8] {
        let mut cache = KvCache::stack(&vec![cache.clone(); batch])?;
        let mut rows = logits.broadcast_as((batch, logits.dim(1)?))?.contiguous()?;
        let started = Instant::now();
        for _ in 0..gen_tokens {
            let next: Vec<Vec<u32>> = rows
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|t| vec![t])
                .collect();
            let hidden = model.forward(&next, &mut cache)?;
            rows = model.logits(&hidden.squeeze(1)?)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let total = (batch * gen_tokens) as f64;
        println!(
            "gen_tok_s_batch{batch}\t{:.2}\t({} tokens in {seconds:.2} s)",
            total / seconds,
            batch * gen_tokens
        );
        if batch == 1 {
            logits = rows.i(0..1)?;
            let _ = &logits;
        }
    }

    // Labelling by scoring: a 5-intent prompt, one message after another, so that the shared
    // instructions come from the prompt cache as in the generate stage.
    let system = format!(
        "You label customer messages with exactly one intent. Intents:\n{}\nAnswer with the \
         intent name only.",
        INTENTS
            .map(|i| format!("- {i}: messages about {i}"))
            .join("\n")
    );
    let choices: Vec<String> = INTENTS.map(String::from).to_vec();
    let mut times = Vec::new();
    for message in MESSAGES {
        let messages = [
            ChatMessage::system(system.clone()),
            ChatMessage::user(message),
        ];
        let started = Instant::now();
        let scores = engine.score_choices(&messages, &choices)?;
        times.push(started.elapsed().as_secs_f64());
        let best = scores
            .logprobs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, lp)| format!("{} p={:.2}", INTENTS[i], lp.exp()))
            .unwrap_or_default();
        println!("label\t{message}\t{best}\t{:.2} s", times.last().unwrap());
    }
    // Labelling as JSON under a schema (constrained decoding), greedy.
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": INTENTS}},
        "required": ["intent"],
        "additionalProperties": false
    });
    let mut json_times = Vec::new();
    for message in MESSAGES {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system(system.clone()),
                ChatMessage::user(message),
            ],
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 24,
            json_schema: Some(schema.clone()),
            seed: Some(0),
        };
        let started = Instant::now();
        let answer = engine.chat_batch(&[request]).remove(0)?;
        json_times.push(started.elapsed().as_secs_f64());
        println!(
            "json\t{message}\t{}\t{:.2} s",
            answer.text,
            json_times.last().unwrap()
        );
    }
    let json_rest: f64 = json_times[1..].iter().sum::<f64>() / (json_times.len() - 1) as f64;
    println!("json_s_per_message_cached_prefix\t{json_rest:.2}");

    let first = times[0];
    let rest: f64 = times[1..].iter().sum::<f64>() / (times.len() - 1) as f64;
    println!("score_s_per_message_cold\t{first:.2}");
    println!("score_s_per_message_cached_prefix\t{rest:.2}");
    Ok(())
}
