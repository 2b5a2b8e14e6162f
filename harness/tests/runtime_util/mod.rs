//! Helpers shared by the `runtime_*` integration tests: reading reference tensors and comparing at real positions.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};

use super::common;

/// Every tensor of a safetensors file, on the CPU.
pub fn load_st(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `[B, T]` integer tensor → host booleans (non-zero = real token).
pub fn mask_rows(mask: &Tensor) -> Vec<Vec<bool>> {
    mask.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap().into_iter().map(|r| r.into_iter().map(|x| x != 0.0).collect()).collect()
}

/// max |a - b| over positions `[b, t, ..]` where `mask[b][t]`.
pub fn max_diff_masked(a: &Tensor, b: &Tensor, mask: &[Vec<bool>]) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
    let (bs, ts) = (d.dim(0).unwrap(), d.dim(1).unwrap());
    assert!(mask.len() >= bs && mask.iter().take(bs).all(|r| r.len() >= ts), "mask smaller than [{bs}, {ts}]");
    let mut m = 0f32;
    for (i, row) in mask.iter().enumerate().take(bs) {
        for (j, &keep) in row.iter().enumerate().take(ts) {
            if keep {
                let v = d.get(i).unwrap().get(j).unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(!v.is_nan(), "NaN at [{i}, {j}]");
                m = m.max(v);
            }
        }
    }
    m
}

/// Parity folders made by transformers (all but stories260K, which needs the GGUF loader).
pub fn parity_dirs() -> Vec<PathBuf> {
    let root = common::fixtures().join("parity");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

pub fn zoo(name: &str) -> PathBuf {
    common::fixtures().join("zoo-dev").join(name)
}

/// Run the trapdoor binary.
pub fn trapdoor(args: &[&str]) -> Output {
    std::process::Command::new(common::trapdoor_bin()).args(args).env("RAYON_NUM_THREADS", "1").output().expect("run trapdoor")
}

/// Assert the CLI failed with exit code 2 and a one-line error mentioning every `needles`; returns stderr.
pub fn assert_clean_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {:?}; stderr: {stderr}", out.status.code());
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("internal error") && !stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
    stderr
}
