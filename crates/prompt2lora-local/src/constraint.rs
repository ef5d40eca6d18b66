//! Constrained decoding: the llguidance grammar engine, driven by the teacher's tokenizer,
//! tells at every step which tokens keep the answer valid under a JSON schema.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};

use crate::LocalError;
use crate::tokenizer::Vocab;

/// Builds one matcher per constrained request; holds the token trie, built once per model.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// `end_of_turn` is the token the model writes after its answer; it is the only way out
    /// of a finished grammar.
    pub fn new(vocab: &Vocab, end_of_turn: u32) -> Result<Self, LocalError> {
        let json: serde_json::Value = serde_json::from_str(
            &vocab
                .tokenizer
                .to_string(false)
                .map_err(|e| LocalError::Constraint(e.to_string()))?,
        )
        .map_err(|e| LocalError::Constraint(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| LocalError::Constraint(format!("cannot read the token bytes: {e}")))?;
        words.resize(
            vocab.tokenizer.get_vocab_size(true).max(words.len()),
            Vec::new(),
        );
        let mut info = TokRxInfo::new(words.len() as u32, end_of_turn);
        info.tok_end_of_turn = Some(end_of_turn);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(TokenizerBridge {
            trie,
            tokenizer: vocab.tokenizer.clone(),
        });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| LocalError::Constraint(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A matcher that accepts exactly the JSON documents valid under `schema`.
    /// JSON is written compactly with the usual separators (`, ` and `: `), as models are
    /// used to; free whitespace would let a model pad its answer with newlines.
    pub fn json_schema(&self, schema: &serde_json::Value) -> Result<Matcher, LocalError> {
        if !schema.is_object() {
            return Err(LocalError::Constraint(
                "the JSON schema is not an object".into(),
            ));
        }
        let mut schema = schema.clone();
        JsonCompileOptions {
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            whitespace_flexible: false,
            ..JsonCompileOptions::default()
        }
        .apply_to(&mut schema);
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| LocalError::Constraint(format!("unusable JSON schema: {e}")))?;
        Ok(Matcher::new(Ok(parser)))
    }
}

/// The teacher's tokenizer as llguidance sees it.
struct TokenizerBridge {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for TokenizerBridge {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Text that is not whole UTF-8 cannot go through the BPE tokenizer; the trie's greedy
        // split is a valid (if not canonical) tokenization of it.
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode_fast(text, false) {
                Ok(encoding) => encoding.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
