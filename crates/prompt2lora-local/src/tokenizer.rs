//! The teacher's tokenizer: a `tokenizer.json` beside the GGUF file when there is one, else a
//! byte-level BPE tokenizer built from the GGUF metadata (`tokenizer.ggml.*`), plus the ids that
//! end a turn.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::LocalError;
use crate::gguf::GgufFile;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Splitting rules of the Qwen2 family (also used by Qwen2.5), from its `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Splitting rules of Llama 3 (`llama-bpe` in GGUF): like Qwen2 but digits in runs of three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with the special ids that generation needs.
pub struct Vocab {
    pub tokenizer: Tokenizer,
    /// Token ids that end the assistant's turn (end of text, end of turn, `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub eos_id: u32,
    pub bos_token: Option<String>,
    pub eos_token: String,
    pub size: usize,
}

impl Vocab {
    /// Loads `tokenizer.json` from beside the GGUF file when present, else builds the
    /// tokenizer from the GGUF metadata.
    pub fn load(gguf: &GgufFile) -> Result<Self, LocalError> {
        let beside = gguf.path().with_file_name("tokenizer.json");
        let tokenizer = if beside.is_file() {
            tracing::debug!(path = %beside.display(), "using the tokenizer.json beside the GGUF file");
            Tokenizer::from_file(&beside).map_err(|e| LocalError::Tokenizer {
                path: beside.clone(),
                message: e.to_string(),
            })?
        } else {
            tokenizer_from_gguf(gguf)?
        };
        Self::with_tokenizer(gguf, tokenizer)
    }

    fn with_tokenizer(gguf: &GgufFile, tokenizer: Tokenizer) -> Result<Self, LocalError> {
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let eos_id = gguf.u32("tokenizer.ggml.eos_token_id")?;
        let token_text = |id: u32| tokens.get(id as usize).map(|t| t.to_string());
        let eos_token = token_text(eos_id).ok_or_else(|| {
            gguf.error(format!("eos token id {eos_id} is outside the vocabulary"))
        })?;
        let bos_token = gguf
            .opt_u32("tokenizer.ggml.bos_token_id")?
            .and_then(token_text);

        // The chat templates end a turn with a marker that is not always the declared eos.
        let mut stop_ids = vec![eos_id];
        if let Some(eot) = gguf.opt_u32("tokenizer.ggml.eot_token_id")? {
            stop_ids.push(eot);
        }
        for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = tokens.iter().position(|t| *t == marker) {
                stop_ids.push(id as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let size = tokens.len().max(tokenizer.get_vocab_size(true));
        Ok(Vocab {
            tokenizer,
            stop_ids,
            eos_id,
            bos_token,
            eos_token,
            size,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| LocalError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| LocalError::Encode(e.to_string()))
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
}

/// Builds the byte-level BPE tokenizer that the GGUF metadata describes.
///
/// The tokens in `tokenizer.ggml.tokens` are already in the byte-to-unicode alphabet of GPT-2,
/// and `tokenizer.ggml.merges` lists the merges in rank order, so they go into the BPE model as
/// they are. The pre-tokenizer is not stored in GGUF, only its name (`tokenizer.ggml.pre`):
/// the splitting rules of each supported name are written out here.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<Tokenizer, LocalError> {
    let model = gguf.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(gguf.error(format!(
            "tokenizer model `{model}` cannot be built from GGUF metadata (only byte-level BPE, \
             `gpt2`, can); put its tokenizer.json beside the GGUF file"
        )));
    }
    let pre = gguf
        .opt_string("tokenizer.ggml.pre")?
        .unwrap_or("default")
        .to_string();
    let tokens = gguf.strings("tokenizer.ggml.tokens")?;
    let types = if gguf.metadata().contains_key("tokenizer.ggml.token_type") {
        gguf.i32s("tokenizer.ggml.token_type")?
    } else {
        vec![1; tokens.len()]
    };
    let merges = gguf.strings("tokenizer.ggml.merges")?;

    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), id as u32))
        .collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            let (left, right) = merge.split_once(' ').ok_or_else(|| {
                gguf.error(format!(
                    "merge {rank} (`{merge}`) is not two tokens split by a space"
                ))
            })?;
            Ok((left.to_string(), right.to_string()))
        })
        .collect::<Result<Vec<_>, LocalError>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre == "llama-bpe" || pre == "llama3")
        .build()
        .map_err(|e| gguf.error(format!("cannot build the BPE tokenizer: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let (pre_tokenizer, nfc) = pre_tokenizer(&pre).map_err(|message| gguf.error(message))?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    if nfc {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| gguf.error(format!("cannot set the normalizer: {e}")))?;
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens (`<|im_start|>`) are special: left out when decoding an answer.
    // User-defined ones (`<tool_call>`) are plain added tokens, matched whole in text.
    let added = |wanted: i32| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, ty)| **ty == wanted)
            .map(|(token, _)| AddedToken::from(token.to_string(), wanted == TOKEN_TYPE_CONTROL))
            .collect()
    };
    let add_error = |e: tokenizers::Error| gguf.error(format!("cannot add special tokens: {e}"));
    tokenizer
        .add_special_tokens(added(TOKEN_TYPE_CONTROL))
        .map_err(add_error)?;
    tokenizer
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED))
        .map_err(add_error)?;
    Ok(tokenizer)
}

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` name, and whether the text is
/// NFC-normalised first.
fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool), String> {
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, String> {
        let split = Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("bad pre-tokenizer pattern: {e}"))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into())
    };
    match pre {
        "qwen2" | "deepseek-r1-qwen" => Ok((split(QWEN2_PATTERN)?, true)),
        "llama-bpe" | "llama3" => Ok((split(LLAMA3_PATTERN)?, false)),
        // GPT-2's own rules, applied by the byte-level pre-tokenizer; SmolLM and StarCoder
        // first split every digit apart.
        "smollm" | "starcoder" | "refact" => Ok((
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, false, true).into(),
            ])
            .into(),
            false,
        )),
        "gpt-2" | "gpt2" | "default" => Ok((ByteLevel::new(false, false, true).into(), false)),
        other => Err(format!(
            "pre-tokenizer `{other}` is not known here; put the model's tokenizer.json beside \
             the GGUF file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_tiny_model;

    fn vocab(pre: &str) -> (tempfile::TempDir, Result<Vocab, LocalError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_model(&path, "llama", pre);
        let vocab = Vocab::load(&GgufFile::open(&path).unwrap());
        (dir, vocab)
    }

    /// Id of a single byte in the tiny vocabulary (three control tokens come first).
    fn byte(b: u8) -> u32 {
        3 + u32::from(b)
    }

    #[test]
    fn merges_and_special_tokens_from_metadata() {
        let (_dir, vocab) = vocab("qwen2");
        let vocab = vocab.unwrap();
        // Merged tokens: he=259 ll=260 Ġw=261 or=262 hell=263 hello=264 Ġhello=265 Ġwor=266
        // Ġworl=267 Ġworld=268.
        assert_eq!(vocab.encode("hello world").unwrap(), [264, 268]);
        assert_eq!(vocab.encode(" hello").unwrap(), [265]);
        assert_eq!(
            vocab.encode("<|im_start|>hello<|im_end|>").unwrap(),
            [1, 264, 2]
        );
        assert_eq!(vocab.encode("hex").unwrap(), [259, byte(b'x')]);
        assert_eq!(vocab.stop_ids, [0, 2]);
        assert_eq!(vocab.eos_token, "<|im_end|>");
        assert_eq!(vocab.bos_token.as_deref(), Some("<|endoftext|>"));
    }

    #[test]
    fn bytes_round_trip_through_encode_and_decode() {
        let (_dir, vocab) = vocab("qwen2");
        let vocab = vocab.unwrap();
        for text in ["héllo wörld", "退货 😀", "a\n\n\tb  c", "e\u{301}"] {
            let ids = vocab.encode(text).unwrap();
            let decoded = vocab.decode(&ids).unwrap();
            // Qwen2 normalises to NFC before splitting.
            let nfc: String = unicode_normalization::UnicodeNormalization::nfc(text).collect();
            assert_eq!(decoded, nfc, "{text:?} -> {ids:?}");
        }
    }

    #[test]
    fn pre_tokenizer_follows_the_metadata_name() {
        // The regexes differ on where words end: qwen2 and smollm keep " world" whole.
        let (_dir, qwen) = vocab("qwen2");
        assert_eq!(
            qwen.unwrap().encode("hello  world").unwrap(),
            [264, byte(b' '), 268]
        );
        let (_dir, smollm) = vocab("smollm");
        assert_eq!(
            smollm.unwrap().encode("hello  world").unwrap(),
            [264, byte(b' '), 268]
        );
        // Digits: one per piece for qwen2 and smollm, runs for GPT-2, runs of three for
        // Llama 3. The tiny vocabulary merges "1 2" into id 269.
        let (_dir, gpt2) = vocab("gpt2");
        assert_eq!(gpt2.unwrap().encode("12").unwrap(), [269]);
        let (_dir, llama3) = vocab("llama-bpe");
        assert_eq!(llama3.unwrap().encode("12").unwrap(), [269]);
        for pre in ["qwen2", "smollm"] {
            let (_dir, split) = vocab(pre);
            assert_eq!(
                split.unwrap().encode("12").unwrap(),
                [byte(b'1'), byte(b'2')],
                "{pre}"
            );
        }
    }

    #[test]
    fn unknown_pre_tokenizer_names_the_way_out() {
        let (_dir, vocab) = vocab("mystery");
        let err = vocab.err().unwrap().to_string();
        assert!(
            err.contains("tiny.gguf") && err.contains("tokenizer.json"),
            "{err}"
        );
    }
}
