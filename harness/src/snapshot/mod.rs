//! Baseline snapshots (issue 7): record a baseline's behaviour on the probe suites once, so a pipeline can gate
//! many fine-tunes of one base without loading it every time, and a reviewer can see exactly which baseline
//! behaviour a verdict was measured against.
//!
//! [`format`] is the on-disk format (`manifest.json` + `snapshot.safetensors`) and its strict reader, [`topk`] the
//! top-k compression of next-token distributions with the divergence estimate and its error bound, [`record`] the
//! recording (the baseline half of a scan's probes stage) and the checks of a snapshot against a model and suites.

pub mod format;
pub mod record;
pub mod topk;

pub use format::{Manifest, PromptRecord, Snapshot, SnapshotData, SnapshotError, TopK};
