//! Text normalisation shared by sample ids (every stage) and exact de-duplication (filter).

use unicode_normalization::UnicodeNormalization;

/// Normalises a message so that trivially different spellings compare equal.
///
/// NFKC folds full-width Latin letters, digits and punctuation to their half-width forms
/// (common in Chinese input), then the text is lower-cased, punctuation and symbols are
/// dropped and runs of whitespace become one space.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkc().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else if is_punctuation(c) {
            continue;
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c,
            '\u{2000}'..='\u{206F}' // general punctuation: dashes, quotes, ellipsis
            | '\u{3000}'..='\u{303F}' // CJK punctuation: 。、「」
            | '\u{FF00}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' // full-width leftovers
            | '\u{FE30}'..='\u{FE4F}' // CJK compatibility forms
            | '\u{00A1}'..='\u{00BF}' // Latin-1 punctuation and symbols
        )
        || is_emoji(c)
}

fn is_emoji(c: char) -> bool {
    matches!(c, '\u{1F300}'..='\u{1FAFF}' | '\u{2600}'..='\u{27BF}' | '\u{FE0F}')
}

/// Number of Unicode scalar values, the length unit of every text limit.
pub fn char_len(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_space_and_punctuation() {
        assert_eq!(normalize("  Where is   my PARCEL?! "), "where is my parcel");
        assert_eq!(normalize("ＡＢＣ１２３，我要退货！"), "abc123我要退货");
        assert_eq!(normalize("我要退货。"), normalize("我要退货"));
        assert_eq!(normalize("“发票”……"), "发票");
    }

    #[test]
    fn keeps_distinct_texts_distinct() {
        assert_ne!(normalize("我要退货"), normalize("我要换货"));
        assert_ne!(normalize("return it"), normalize("return them"));
    }
}
