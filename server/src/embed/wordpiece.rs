//! BERT's tokenizer: the "basic" pre-tokenizer (clean, split on whitespace and
//! punctuation, lower-case and strip accents for uncased models) followed by WordPiece
//! (greedy longest match against the vocabulary, continuations spelled `##piece`).
//!
//! This is the tokenizer that BERT-family sentence-embedding models (MiniLM, BGE, E5,
//! ...) were trained with; the model and its `vocab.txt` come as a pair. It follows
//! Hugging Face's `BertTokenizer` step by step, with one approximation: outside ASCII,
//! punctuation is recognised by Unicode block (general and supplemental punctuation,
//! CJK and full-width forms) rather than by the full general-category table, so a rare
//! punctuation mark elsewhere stays inside its word and becomes word pieces or `[UNK]`.

use std::collections::HashMap;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longest word (in chars) WordPiece splits; a longer one becomes `[UNK]` (as BERT).
const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary and the ids of its special tokens.
#[derive(Debug)]
pub struct WordPiece {
    vocab: HashMap<String, i64>,
    lower_case: bool,
    /// `[CLS]`, put first.
    pub cls: i64,
    /// `[SEP]`, put last.
    pub sep: i64,
    /// `[UNK]`, for words with no spelling in the vocabulary.
    pub unk: i64,
}

impl WordPiece {
    /// The vocabulary of `vocab.txt` (one token per line, the line number is its id).
    /// `lower_case`: the model is uncased (lower-case and strip accents first).
    pub fn from_vocab(text: &str, lower_case: bool) -> Result<WordPiece, String> {
        let vocab: HashMap<String, i64> = text
            .lines()
            .enumerate()
            .map(|(i, t)| (t.trim_end_matches('\r').to_string(), i as i64))
            .collect();
        let special = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {t} token"))
        };
        Ok(WordPiece {
            cls: special("[CLS]")?,
            sep: special("[SEP]")?,
            unk: special("[UNK]")?,
            vocab,
            lower_case,
        })
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// Whether the vocabulary is empty (never: it has the special tokens).
    pub fn is_empty(&self) -> bool {
        self.vocab.is_empty()
    }

    /// The ids of `text` as the model reads it: `[CLS]`, the word pieces, `[SEP]`, at
    /// most `max_len` ids in all (the pieces past it are cut off, as BERT truncates).
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i64> {
        let room = max_len.saturating_sub(2);
        let mut ids = Vec::with_capacity(room.min(text.len() / 3 + 2) + 2);
        ids.push(self.cls);
        let mut word = String::new();
        let mut full = false;
        for_each_word(text, self.lower_case, &mut word, |w| {
            if !full {
                full = !self.word_pieces(w, &mut ids, room + 1);
            }
        });
        ids.truncate(room + 1);
        ids.push(self.sep);
        ids
    }

    /// Appends the pieces of one word to `ids`; false once `ids` holds `limit` ids.
    fn word_pieces(&self, word: &str, ids: &mut Vec<i64>, limit: usize) -> bool {
        if word.chars().count() > MAX_WORD_CHARS {
            ids.push(self.unk);
            return ids.len() < limit;
        }
        let start_len = ids.len();
        let mut start = 0;
        let mut piece = String::with_capacity(word.len() + 2);
        while start < word.len() {
            // Longest vocabulary entry that starts at `start`.
            let mut end = word.len();
            let mut found = None;
            while end > start {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                // Back off one char (not one byte).
                end = word[..end]
                    .char_indices()
                    .next_back()
                    .map_or(start, |(i, _)| i);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    // No spelling: the whole word is one [UNK] (as BERT).
                    ids.truncate(start_len);
                    ids.push(self.unk);
                    break;
                }
            }
        }
        ids.len() < limit
    }
}

/// Calls `f` with each word of `text` after BERT's basic tokenization. `word` is a
/// scratch buffer.
fn for_each_word(text: &str, lower_case: bool, word: &mut String, mut f: impl FnMut(&str)) {
    word.clear();
    let push_char = |c: char, word: &mut String, f: &mut dyn FnMut(&str)| {
        if c.is_whitespace() {
            if !word.is_empty() {
                f(word);
                word.clear();
            }
        } else if is_punctuation(c) || is_cjk(c) {
            // A word of its own.
            if !word.is_empty() {
                f(word);
                word.clear();
            }
            let mut buf = [0u8; 4];
            f(c.encode_utf8(&mut buf));
        } else {
            word.push(c);
        }
    };
    let f: &mut dyn FnMut(&str) = &mut f;
    for c in text.chars() {
        // Clean: drop NUL, the replacement char and control chars (tabs and newlines
        // are whitespace).
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if lower_case {
            // Lower-case, then strip accents: decompose and drop the combining marks.
            for l in c.to_lowercase() {
                for d in std::iter::once(l).nfd() {
                    if !is_combining_mark(d) {
                        push_char(d, word, &mut *f);
                    }
                }
            }
        } else {
            push_char(c, word, &mut *f);
        }
    }
    if !word.is_empty() {
        f(word);
        word.clear();
    }
}

/// BERT's punctuation: every non-alphanumeric ASCII symbol, and the Unicode
/// punctuation blocks (see the module docs).
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    matches!(c as u32,
        0x00A1..=0x00BF // Latin-1 punctuation and symbols (¡ « » ¿ ...)
        | 0x2010..=0x2027 // dashes, quotes, bullets, ellipsis
        | 0x2030..=0x205E // per mille, primes, guillemets, ...
        | 0x2E00..=0x2E7F // supplemental punctuation
        | 0x3001..=0x3003 // CJK comma and full stops
        | 0x3008..=0x3011 // CJK brackets
        | 0x3014..=0x301F // more CJK brackets
        | 0xFE30..=0xFE4F // CJK compatibility forms
        | 0xFF01..=0xFF0F // full-width ! " # ... /
        | 0xFF1A..=0xFF20 // full-width : ; < = > ? @
        | 0xFF3B..=0xFF40 // full-width [ \ ] ^ _ `
        | 0xFF5B..=0xFF65 // full-width { | } ~ and half-width CJK punctuation
    )
}

/// CJK ideographs, which BERT makes words of their own (the ranges of its
/// `_is_chinese_char`).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> WordPiece {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", ",", "!", "un", "##aff",
            "##able", "cafe", "中", "##s", "run", "'",
        ];
        WordPiece::from_vocab(&words.join("\n"), true).unwrap()
    }

    #[test]
    fn splits_words_punctuation_and_pieces() {
        let wp = vocab();
        // [CLS] hello , world ! un ##aff ##able [SEP]
        assert_eq!(
            wp.encode("Hello,  WORLD!\tunaffable", 64),
            vec![2, 4, 6, 5, 7, 8, 9, 10, 3]
        );
        // Accents are stripped for an uncased model; CJK chars are words.
        assert_eq!(wp.encode("Café中", 64), vec![2, 11, 12, 3]);
        // A word with no spelling is one [UNK], not a partial spelling.
        assert_eq!(wp.encode("unx hello", 64), vec![2, 1, 4, 3]);
        // Control chars vanish; an empty text is [CLS] [SEP].
        assert_eq!(wp.encode("\u{7}\u{0}", 64), vec![2, 3]);
    }

    #[test]
    fn truncates_to_the_limit() {
        let wp = vocab();
        let ids = wp.encode("hello world hello world hello", 4);
        assert_eq!(ids, vec![2, 4, 5, 3]);
        let ids = wp.encode("unaffable", 4);
        assert_eq!(ids, vec![2, 8, 9, 3]);
        // A limit below two still frames the text.
        assert_eq!(wp.encode("hello", 0), vec![2, 3]);
    }

    proptest::proptest! {
        /// Any text a client sends (the tokenizer reads untrusted input): no panic,
        /// framed by [CLS] and [SEP], within the limit, only vocabulary ids.
        #[test]
        fn any_text_encodes_within_bounds(text in "\\PC{0,200}|[a-z ,!]{0,200}", max in 0usize..40) {
            let wp = vocab();
            let ids = wp.encode(&text, max);
            proptest::prop_assert!(ids.len() <= max.max(2));
            proptest::prop_assert_eq!(ids[0], wp.cls);
            proptest::prop_assert_eq!(*ids.last().unwrap(), wp.sep);
            proptest::prop_assert!(ids.iter().all(|&i| (0..wp.len() as i64).contains(&i)));
        }
    }

    #[test]
    fn cased_vocabularies_keep_case() {
        let wp = WordPiece::from_vocab("[UNK]\n[CLS]\n[SEP]\nHello\nhello", false).unwrap();
        assert_eq!(wp.encode("Hello hello", 16), vec![1, 3, 4, 2]);
        assert!(WordPiece::from_vocab("a\nb", true)
            .unwrap_err()
            .contains("[CLS]"));
    }
}
