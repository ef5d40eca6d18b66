//! The local teacher on real embedded models from the model cache: SmolLM2-135M-Instruct for
//! chat, JSON-schema answers and choice scoring; Qwen2.5 for its tokenizer. Each test is
//! skipped, with a message, when its model has not been fetched (`prompt2lora models fetch`).

use std::path::PathBuf;

use futures::executor::block_on;
use prompt2lora_core::{ChatMessage, ChatRequest, Teacher};
use prompt2lora_local::{LocalOptions, LocalTeacher};

/// The GGUF file of an embedded model, if it is in the cache (never downloads).
fn cached_gguf(name: &str) -> Option<PathBuf> {
    let spec = prompt2lora_hub::catalog::find(name).expect("an embedded model name");
    if prompt2lora_hub::ModelCache::from_env()
        .cached(spec)
        .is_none()
    {
        eprintln!(
            "skipped: {name} is not in the model cache at {}; run `prompt2lora models fetch`",
            prompt2lora_hub::home().display()
        );
        return None;
    }
    let files = prompt2lora_hub::resolve(name).expect("a cached model resolves");
    files.gguf
}

fn smollm2() -> Option<LocalTeacher> {
    let gguf = cached_gguf("smollm2-135m")?;
    let options = LocalOptions {
        model_id: "smollm2-135m".into(),
        ..LocalOptions::default()
    };
    Some(LocalTeacher::load(&gguf, options).expect("SmolLM2 loads"))
}

fn request(user: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::user(user)],
        temperature: 0.0,
        top_p: 1.0,
        max_tokens,
        json_schema: None,
        seed: Some(1),
    }
}

#[test]
fn smollm2_answers_chats_and_json_and_scores_choices() {
    let Some(teacher) = smollm2() else { return };
    assert_eq!(teacher.model_id(), "smollm2-135m");

    // A plain answer: text without chat markup, within the token budget.
    let answer = block_on(teacher.chat(&request("What is the capital of France?", 24))).unwrap();
    eprintln!("chat answer: {:?}", answer.text);
    assert!(!answer.text.trim().is_empty());
    assert!(!answer.text.contains("<|im_"), "{:?}", answer.text);
    assert!((1..=24).contains(&answer.usage.completion_tokens));
    assert!(answer.usage.prompt_tokens > 10);

    // A schema-constrained answer parses and uses one of the allowed intents.
    let intents = ["refund", "delivery", "greeting"];
    let mut labelled = request(
        "Classify the intent of this customer message as JSON.\nMessage: \"Hello there, good \
         morning to you!\"",
        40,
    );
    labelled.json_schema = Some(serde_json::json!({
        "type": "object",
        "properties": {"intent": {"type": "string", "enum": intents}},
        "required": ["intent"],
        "additionalProperties": false
    }));
    let answer = block_on(teacher.chat(&labelled)).unwrap();
    eprintln!("JSON answer: {:?}", answer.text);
    let value: serde_json::Value = serde_json::from_str(&answer.text).unwrap();
    assert!(
        intents.contains(&value["intent"].as_str().unwrap()),
        "{value}"
    );

    // Scoring: the answer the prompt dictates wins clearly.
    let messages = [ChatMessage::user(
        "Reply with the single word banana and nothing else.",
    )];
    let choices: Vec<String> = ["banana", "Paris", "seventeen"].map(String::from).to_vec();
    let scores = block_on(teacher.score_choices(&messages, &choices)).unwrap();
    eprintln!("choice log-probabilities: {:?}", scores.logprobs);
    assert!(scores.logprobs.iter().all(|lp| lp.is_finite() && *lp < 0.0));
    assert!(
        scores.logprobs[0] > scores.logprobs[1] + 1.0,
        "{:?}",
        scores.logprobs
    );
    assert!(
        scores.logprobs[0] > scores.logprobs[2] + 1.0,
        "{:?}",
        scores.logprobs
    );
}

#[test]
fn smollm2_batches_concurrent_chats() {
    let Some(teacher) = smollm2() else { return };
    let prompts = ["Name a fruit.", "Name a colour.", "Name an animal."];
    let requests: Vec<ChatRequest> = prompts
        .iter()
        .map(|p| ChatRequest {
            temperature: 0.7,
            top_p: 0.9,
            ..request(p, 12)
        })
        .collect();
    let together = block_on(futures::future::join_all(
        requests.iter().map(|r| teacher.chat(r)),
    ));
    for (request, answer) in requests.iter().zip(together) {
        let answer = answer.unwrap();
        // Seeded sampling gives the same answer in a batch as alone.
        let alone = block_on(teacher.chat(request)).unwrap();
        assert_eq!(answer.text, alone.text);
        assert!(!answer.text.trim().is_empty());
    }
}

/// Token ids of Qwen2.5's tokenizer, computed independently with tiktoken from the Qwen
/// vocabulary file and its splitting pattern (NFC-normalised input).
const QWEN_REFERENCE: &[(&str, &[u32])] = &[
    (
        "Hello, world! I'd like to return my order #12345.",
        &[
            9707, 11, 1879, 0, 358, 4172, 1075, 311, 470, 847, 1973, 671, 16, 17, 18, 19, 20, 13,
        ],
    ),
    (
        "我想退货，订单号是 12345，请尽快处理。",
        &[
            104100, 117065, 3837, 50410, 17992, 20412, 220, 16, 17, 18, 19, 20, 37945, 104883,
            54542, 1773,
        ],
    ),
    (
        "Où est ma commande? 😀👍🏽",
        &[46, 14926, 1788, 7491, 67751, 30, 90316, 144349, 145375],
    ),
    (
        "  leading spaces\n\n\ttabs and   runs   \n",
        &[220, 6388, 12621, 271, 3244, 3435, 323, 256, 8473, 5872],
    ),
    (
        "<|im_start|>user\nWhere is my parcel?<|im_end|>\n<|im_start|>assistant\n",
        &[
            151644, 872, 198, 9064, 374, 847, 29309, 30, 151645, 198, 151644, 77091, 198,
        ],
    ),
    (
        "def f(x):\n    return x**2  # comment",
        &[750, 282, 2075, 982, 262, 470, 856, 334, 17, 220, 671, 3980],
    ),
];

#[test]
fn qwen_tokenizer_from_metadata_matches_reference_ids() {
    let Some(gguf) = cached_gguf("qwen2.5-0.5b").or_else(|| cached_gguf("qwen2.5-1.5b")) else {
        return;
    };
    let file = prompt2lora_local::gguf::GgufFile::open(&gguf).unwrap();
    let tokenizer = prompt2lora_local::tokenizer::tokenizer_from_gguf(&file).unwrap();
    for (text, expected) in QWEN_REFERENCE {
        let ids = tokenizer
            .encode_fast(*text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(&ids, expected, "{text:?}");
    }
}

/// Token ids of SmolLM2's GGUF file as llama.cpp's tokenizer gives them.
const SMOLLM2_REFERENCE: &[(&str, &[u32])] = &[
    (
        "Hello, world! I'd like to return my order #12345.",
        &[
            19556, 28, 905, 17, 339, 6737, 702, 288, 1003, 957, 1686, 907, 33, 34, 35, 36, 37, 30,
        ],
    ),
    (
        "Où est ma commande? 😀👍🏽",
        &[
            63, 45586, 1264, 12102, 3588, 85, 47, 40303, 218, 10813, 235, 231, 10813, 233, 138,
        ],
    ),
    (
        "  leading spaces\n\n\ttabs and   runs   \n",
        &[
            216, 2899, 5600, 1116, 197, 100, 7366, 284, 256, 7313, 333, 198,
        ],
    ),
    (
        "<|im_start|>user\nWhere is my parcel?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 4093, 198, 9576, 314, 957, 35598, 47, 2, 198, 1, 520, 9531, 198,
        ],
    ),
    (
        "def f(x):\n    return x**2  # comment",
        &[
            1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5189,
        ],
    ),
    (
        "我想退货",
        &[19805, 235, 177, 221, 128, 24838, 218, 42816, 117],
    ),
];

#[test]
fn smollm2_tokenizer_from_metadata_matches_llama_cpp() {
    let Some(gguf) = cached_gguf("smollm2-135m") else {
        return;
    };
    let file = prompt2lora_local::gguf::GgufFile::open(&gguf).unwrap();
    let tokenizer = prompt2lora_local::tokenizer::tokenizer_from_gguf(&file).unwrap();
    for (text, expected) in SMOLLM2_REFERENCE {
        let ids = tokenizer
            .encode_fast(*text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(&ids, expected, "{text:?}");
    }
}
