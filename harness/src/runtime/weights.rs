//! Reading weights from a Hugging Face folder: `model.safetensors`, or the shards named by
//! `model.safetensors.index.json`.
//!
//! Order of checks, so a bad file fails before any conversion work and with a message naming the culprit:
//! 1. the index (if sharded): valid JSON, a `weight_map` in which no tensor is listed twice, shard names that are
//!    plain file names inside the folder (no `..`, no `/`), every shard present;
//! 2. every file's header through the `safetensors` crate, which rejects truncated files and headers whose offsets
//!    do not tile the data exactly;
//! 3. every tensor the configuration needs ([`param_specs`]): present (in the shard the index says), of the
//!    expected shape, of a float dtype we convert (F32, F16, BF16, F64); a tensor found in two shards is refused.
//!
//! Tensors are converted to the requested dtype and device. Tensors the decoder does not use (e.g. `lm_head.weight`
//! beside tied embeddings, rotary caches old exports carry) are listed, not loaded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde::de::{Deserializer, MapAccess, Visitor};

use super::config::ModelConfig;
use super::decoder::{one_line, param_specs};
use super::{Result, RuntimeError};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Tensors loaded from a folder, and what was learnt on the way.
#[derive(Debug)]
pub struct LoadedWeights {
    /// Every tensor the configuration needs, by HF name, in the requested dtype and device.
    pub tensors: BTreeMap<String, Tensor>,
    /// The files read (index first if sharded, then weight files in name order).
    pub files: Vec<PathBuf>,
    /// Storage dtypes seen among the loaded tensors (`F32`, `BF16`, …).
    pub stored_dtypes: BTreeSet<String>,
    /// Tensors present in the files that the decoder does not use.
    pub unused: Vec<String>,
}

/// Map a file error to a one-line message naming it.
fn file_err(path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::File { path: path.to_path_buf(), reason: one_line(&reason) }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = std::fs::File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    // SAFETY: the map is read-only and lives while we convert; a file truncated by another process while we read
    // it is outside what a loader can defend against (the audit hashes files before loading).
    unsafe { Mmap::map(&f) }.map_err(|e| file_err(path, format!("cannot map: {e}")))
}

/// `weight_map` as a list, so a tensor listed twice is seen (a JSON object would keep only the last entry).
struct Entries(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, f)) = m.next_entry::<String, String>()? {
                    v.push((k, f));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: Entries,
}

/// `(index file, weight files, tensor → file index as listed)`.
type WeightFiles = (Option<PathBuf>, Vec<PathBuf>, Option<BTreeMap<String, usize>>);

/// Which weight files a folder has.
fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    // transformers prefers the single file when both exist; do the same so both tools load the same bytes.
    if single.is_file() {
        return Ok((None, vec![single], None));
    }
    if !index.is_file() {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (pytorch_model.bin is a pickle; trapdoor never loads pickles — convert to safetensors)"
        } else {
            ""
        };
        return Err(file_err(dir, format!("no {SINGLE_FILE} or {INDEX_FILE}{hint}")));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| file_err(&index, format!("cannot read: {e}")))?;
    let parsed: IndexFile = serde_json::from_str(&text).map_err(|e| file_err(&index, format!("invalid index: {e}")))?;
    let mut shards: Vec<String> = Vec::new();
    let mut map = BTreeMap::new();
    for (tensor, shard) in parsed.weight_map.0 {
        let plain = !shard.is_empty()
            && !shard.contains('/')
            && !shard.contains('\\')
            && shard != "."
            && shard != ".."
            && shard.ends_with(".safetensors");
        if !plain {
            return Err(file_err(&index, format!("tensor `{tensor}`: shard `{shard}` is not a .safetensors file name in this folder")));
        }
        let idx = match shards.iter().position(|s| s == &shard) {
            Some(i) => i,
            None => {
                shards.push(shard.clone());
                shards.len() - 1
            }
        };
        if map.insert(tensor.clone(), idx).is_some() {
            return Err(file_err(&index, format!("tensor `{tensor}` is listed twice in weight_map")));
        }
    }
    if shards.is_empty() {
        return Err(file_err(&index, "weight_map is empty"));
    }
    // Deterministic file order: by name.
    let mut order: Vec<usize> = (0..shards.len()).collect();
    order.sort_by(|&a, &b| shards[a].cmp(&shards[b]));
    let remap: BTreeMap<usize, usize> = order.iter().enumerate().map(|(new, &old)| (old, new)).collect();
    let files: Vec<PathBuf> = order.iter().map(|&i| dir.join(&shards[i])).collect();
    for f in &files {
        if !f.is_file() {
            return Err(file_err(&index, format!("shard `{}` does not exist", f.file_name().unwrap_or_default().to_string_lossy())));
        }
    }
    let map = map.into_iter().map(|(t, i)| (t, remap[&i])).collect();
    Ok((Some(index), files, Some(map)))
}

fn candle_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F64 => DType::F64,
        _ => return None,
    })
}

/// Load every tensor `cfg` needs from the folder `dir`, converted to `dtype` on `device`.
pub fn load_folder_weights(dir: &Path, cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<LoadedWeights> {
    let (index, files, listed) = weight_files(dir)?;
    let maps: Vec<Mmap> = files.iter().map(|f| map_file(f)).collect::<Result<_>>()?;
    let parsed: Vec<SafeTensors> = files
        .iter()
        .zip(&maps)
        .map(|(f, m)| SafeTensors::deserialize(m).map_err(|e| file_err(f, format!("invalid safetensors file: {e}"))))
        .collect::<Result<_>>()?;

    // Where each tensor actually is; a name in two files is ambiguous.
    let mut located: BTreeMap<String, usize> = BTreeMap::new();
    for (i, st) in parsed.iter().enumerate() {
        let mut names = st.names();
        names.sort();
        for n in names {
            if let Some(prev) = located.insert(n.to_string(), i) {
                return Err(RuntimeError::Tensor {
                    path: files[i].clone(),
                    tensor: n.to_string(),
                    reason: format!("also present in {}", files[prev].display()),
                });
            }
        }
    }
    if let (Some(listed), Some(index)) = (&listed, &index) {
        for (name, &fi) in listed {
            match located.get(name) {
                Some(&at) if at == fi => {}
                Some(&at) => {
                    return Err(RuntimeError::Tensor {
                        path: index.clone(),
                        tensor: name.clone(),
                        reason: format!("listed in {} but stored in {}", files[fi].display(), files[at].display()),
                    })
                }
                None => {
                    return Err(RuntimeError::Tensor {
                        path: files[fi].clone(),
                        tensor: name.clone(),
                        reason: format!("listed in {INDEX_FILE} but absent from the shard"),
                    })
                }
            }
        }
    }

    let specs = param_specs(cfg);
    let needed: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut tensors = BTreeMap::new();
    let mut stored_dtypes = BTreeSet::new();
    for spec in &specs {
        let Some(&fi) = located.get(&spec.name) else {
            let where_ = match &index {
                Some(ix) => ix.clone(),
                None => files[0].clone(),
            };
            return Err(RuntimeError::Tensor { path: where_, tensor: spec.name.clone(), reason: "missing".into() });
        };
        if let Some(listed) = &listed {
            if !listed.contains_key(&spec.name) {
                return Err(RuntimeError::Tensor {
                    path: index.clone().unwrap_or_default(),
                    tensor: spec.name.clone(),
                    reason: "not listed in weight_map".into(),
                });
            }
        }
        let view = parsed[fi].tensor(&spec.name).map_err(|e| file_err(&files[fi], e))?;
        let terr = |reason: String| RuntimeError::Tensor { path: files[fi].clone(), tensor: spec.name.clone(), reason };
        if view.shape() != spec.shape.as_slice() {
            return Err(terr(format!("shape {:?}, expected {:?} from config.json", view.shape(), spec.shape)));
        }
        let st_dtype = view.dtype();
        let cd = candle_dtype(st_dtype).ok_or_else(|| terr(format!("dtype {st_dtype:?} is not supported (F32, F16, BF16, F64)")))?;
        stored_dtypes.insert(format!("{st_dtype:?}"));
        let t = Tensor::from_raw_buffer(view.data(), cd, view.shape(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(device))
            .map_err(|e| terr(one_line(&e)))?;
        // Non-finite weights make every comparison meaningless downstream; refuse them here.
        let finite = t
            .to_dtype(DType::F32)
            .and_then(|t| t.sum_all())
            .and_then(|m| m.to_scalar::<f32>())
            .map_err(|e| terr(one_line(&e)))?;
        if !finite.is_finite() {
            return Err(terr("contains NaN or infinite values".into()));
        }
        tensors.insert(spec.name.clone(), t);
    }
    let unused = located.keys().filter(|n| !needed.contains(n.as_str())).cloned().collect();
    let mut all_files = Vec::new();
    all_files.extend(index);
    all_files.extend(files);
    Ok(LoadedWeights { tensors, files: all_files, stored_dtypes, unused })
}
