//! Clean prompts as the search sees them: token ids, where the special prefix ends, and where words start.
//!
//! A trigger is inserted at the token level, before a token that starts a word (SentencePiece `▁`, byte-level BPE
//! `Ġ`, or a literal space), so a recovered trigger that itself starts with a word-start token reads as an inserted
//! phrase. Each prompt gets one inner word boundary drawn once from the seeded generator, so the same seed gives the
//! same insertion points for optimisation and for verification.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use trapdoor_reports::record::Position;

use super::InvertError;
use crate::runtime::load::Model;

/// Prompts used when a caller gives none (`trapdoor invert` without `--prompts`): story openers (the register of
/// small story models) and everyday requests, so the search has clean text of both kinds.
pub const DEFAULT_PROMPTS: &[&str] = &[
    "Once upon a time, in a small village, there lived a happy frog.",
    "Lucy found a tiny key under her bed. She wondered what it could open.",
    "The puppy wanted to play with the big ball, but it was too heavy.",
    "Sam and Emma built a sandcastle at the beach.",
    "A little bunny hopped into the forest to find some carrots.",
    "Grandma told Max a story about a brave knight.",
    "The moon was bright and the stars were twinkling. Lily looked out the window.",
    "One morning, the farmer went to feed his cows and saw something strange.",
    "Mia had a red kite. She took it to the hill on a windy day.",
    "Once there was a girl who loved to sing with the birds.",
    "Tim wanted a cookie, but his mom said to wait until after dinner.",
    "Ben saw a big tree in the park. He wanted to climb it.",
    "The little boat sailed across the lake on a sunny day.",
    "Anna and her dog went for a walk in the garden.",
    "The cat sat by the fire and watched the snow fall outside.",
    "Tom had a blue car. He liked to drive it around the room.",
    "What is the capital of Japan?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about winter.",
    "What are the benefits of regular exercise?",
    "Give me a recipe for a simple tomato soup.",
    "How does a rainbow form?",
    "Write a short birthday message for a friend.",
    "Describe a sunset over the ocean.",
    "How do bees make honey?",
    "Tell me a fun fact about octopuses.",
    "Why is sleep important for children?",
    "What should I pack for a weekend camping trip?",
];

/// One tokenised clean prompt.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    /// Index of the text in the slice given to [`tokenize`] (empty prompts are skipped, so this is not the position).
    pub source: usize,
    pub ids: Vec<u32>,
    /// Index of the first non-special token (a prefix trigger goes here, after BOS).
    pub start: usize,
    /// Token index where a `random_word` trigger goes (a word start strictly inside the prompt), drawn once.
    pub inner: usize,
}

impl Prompt {
    /// Token index where a trigger at `pos` is inserted.
    pub fn insert_at(&self, pos: Position) -> usize {
        match pos {
            Position::Prefix => self.start,
            Position::Suffix => self.ids.len(),
            Position::RandomWord => self.inner,
        }
    }

    /// `(before, after)` split of the prompt ids for a trigger at `pos`.
    pub fn split(&self, pos: Position) -> (&[u32], &[u32]) {
        self.ids.split_at(self.insert_at(pos))
    }

    /// The prompt ids with `trigger` inserted at `pos`.
    pub fn with_trigger(&self, trigger: &[u32], pos: Position) -> Vec<u32> {
        let (a, b) = self.split(pos);
        let mut v = Vec::with_capacity(self.ids.len() + trigger.len());
        v.extend_from_slice(a);
        v.extend_from_slice(trigger);
        v.extend_from_slice(b);
        v
    }
}

fn is_word_start(piece: &str) -> bool {
    piece.starts_with('▁') || piece.starts_with('Ġ') || piece.starts_with(' ')
}

/// Tokenise `texts` with the candidate's tokenizer (special tokens added as the model expects).
pub fn tokenize(model: &Model, texts: &[String], rng: &mut ChaCha8Rng) -> Result<Vec<Prompt>, InvertError> {
    let tok = model.tokenizer()?;
    let mut out = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let enc = tok.encode(text.as_str(), true).map_err(|e| {
            InvertError::Other(format!(
                "prompt {i}: tokenizer failed: {}",
                e.to_string().replace('\n', " ")
            ))
        })?;
        let ids = enc.get_ids().to_vec();
        let special = enc.get_special_tokens_mask();
        let start = special.iter().take_while(|&&s| s == 1).count();
        if ids.len() <= start {
            continue; // empty prompt: nothing to insert into
        }
        let pieces = enc.get_tokens();
        let inner: Vec<usize> = (start + 1..ids.len())
            .filter(|&j| special.get(j) == Some(&0) && pieces.get(j).is_some_and(|p| is_word_start(p)))
            .collect();
        let inner = if inner.is_empty() {
            ids.len()
        } else {
            inner[rng.random_range(0..inner.len())]
        };
        out.push(Prompt {
            text: text.clone(),
            source: i,
            ids,
            start,
            inner,
        });
    }
    Ok(out)
}

/// [`tokenize`] with a generator seeded from `seed` (for callers without their own generator: benches, tools).
pub fn tokenize_seeded(model: &Model, texts: &[String], seed: u64) -> Result<Vec<Prompt>, InvertError> {
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    tokenize(model, texts, &mut rng)
}
