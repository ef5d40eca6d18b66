//! The cost ledger of the generate stage: requests, tokens, money and teacher seconds per model,
//! written as `ledger.json` beside the samples so that a resumed run keeps counting.

use std::collections::BTreeMap;
use std::path::Path;

use prompt2lora_core::Usage;
use serde::{Deserialize, Serialize};

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
}

impl Price {
    pub const FREE: Price = Price {
        prompt: 0.0,
        completion: 0.0,
    };

    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.prompt
            + usage.completion_tokens as f64 * self.completion)
            / 1e6
    }
}

/// List prices (USD per million prompt and completion tokens) of common hosted models, matched
/// by the longest prefix of the model id after any `provider/` part. Prices change: set
/// `teacher.price_prompt` and `teacher.price_completion` in the task file to be exact.
const PRICES: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-5-nano", 0.05, 0.40),
    ("gpt-5-mini", 0.25, 2.00),
    ("gpt-5", 1.25, 10.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("deepseek-chat", 0.28, 0.42),
    ("deepseek-reasoner", 0.28, 0.42),
    ("qwen-turbo", 0.05, 0.20),
    ("qwen-plus", 0.40, 1.20),
    ("qwen-max", 1.60, 6.40),
];

/// The built-in price of a hosted model, if it is in the list.
pub fn builtin_price(model: &str) -> Option<Price> {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    PRICES
        .iter()
        .filter(|(prefix, _, _)| name.starts_with(prefix))
        .max_by_key(|(prefix, _, _)| prefix.len())
        .map(|&(_, prompt, completion)| Price { prompt, completion })
}

/// What one model cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCost {
    /// Answered requests (retries of one request count once).
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: f64,
    /// Seconds spent waiting for answers, summed over requests (more than wall-clock time when
    /// requests overlap).
    pub seconds: f64,
    /// The price the money was computed with; `None` when no price was known.
    pub price: Option<Price>,
}

/// Requests, tokens, money and seconds per model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub models: BTreeMap<String, ModelCost>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{path}: not a ledger ({source})")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl Ledger {
    /// Reads a ledger; a missing file is an empty ledger.
    pub fn load(path: &Path) -> Result<Ledger, LedgerError> {
        match fs_err::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| LedgerError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the ledger atomically (temporary file, then rename), so a kill never leaves
    /// half a ledger.
    pub fn save(&self, path: &Path) -> Result<(), LedgerError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("a ledger serialises");
        fs_err::write(&tmp, text)?;
        fs_err::rename(&tmp, path)?;
        Ok(())
    }

    /// Books `requests` answered requests with their tokens and seconds.
    pub fn record(
        &mut self,
        model: &str,
        requests: u64,
        usage: Usage,
        seconds: f64,
        price: Option<Price>,
    ) {
        let entry = self.models.entry(model.to_string()).or_default();
        entry.requests += requests;
        entry.prompt_tokens += usage.prompt_tokens;
        entry.completion_tokens += usage.completion_tokens;
        entry.seconds += seconds;
        if let Some(price) = price {
            entry.usd += price.cost(usage);
            entry.price = Some(price);
        }
    }

    /// Adds another ledger's entries into this one.
    pub fn merge(&mut self, other: &Ledger) {
        for (model, cost) in &other.models {
            let entry = self.models.entry(model.clone()).or_default();
            entry.requests += cost.requests;
            entry.prompt_tokens += cost.prompt_tokens;
            entry.completion_tokens += cost.completion_tokens;
            entry.usd += cost.usd;
            entry.seconds += cost.seconds;
            entry.price = cost.price.or(entry.price);
        }
    }

    pub fn total_usd(&self) -> f64 {
        self.models.values().map(|m| m.usd).sum()
    }

    pub fn total_usage(&self) -> Usage {
        let mut usage = Usage::default();
        for m in self.models.values() {
            usage += Usage {
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
            };
        }
        usage
    }

    pub fn total_requests(&self) -> u64 {
        self.models.values().map(|m| m.requests).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_provider_is_ignored() {
        assert_eq!(
            builtin_price("gpt-4o-mini-2024-07-18").unwrap().prompt,
            0.15
        );
        assert_eq!(builtin_price("openai/gpt-4o").unwrap().prompt, 2.50);
        assert_eq!(builtin_price("gpt-4.1-mini").unwrap().completion, 1.60);
        assert!(builtin_price("qwen2.5-1.5b").is_none());
    }

    #[test]
    fn records_money_and_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::load(&path).unwrap();
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 500_000,
        };
        ledger.record(
            "m",
            1,
            usage,
            2.0,
            Some(Price {
                prompt: 1.0,
                completion: 4.0,
            }),
        );
        ledger.record(
            "m",
            1,
            usage,
            1.0,
            Some(Price {
                prompt: 1.0,
                completion: 4.0,
            }),
        );
        ledger.record("free", 1, usage, 1.0, None);
        assert!((ledger.total_usd() - 6.0).abs() < 1e-9);
        assert_eq!(ledger.total_requests(), 3);
        ledger.save(&path).unwrap();
        let back = Ledger::load(&path).unwrap();
        assert_eq!(back, ledger);
        let mut sum = back.clone();
        sum.merge(&ledger);
        assert_eq!(sum.models["m"].requests, 4);
        assert!((sum.total_usd() - 12.0).abs() < 1e-9);
    }
}
