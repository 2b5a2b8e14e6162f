//! Renderers: each a pure function of the [`RunRecord`](crate::record::RunRecord).
//!
//! [`RENDERERS`] is the one table of report files a scan writes; a new format (HTML, SARIF, in-toto, CycloneDX)
//! is a module here plus a line in the table.

pub(crate) mod common;
pub mod csv;
pub mod html;
pub mod cyclonedx;
pub(crate) mod interop;
pub mod intoto;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod sarif;

use crate::record::RunRecord;

/// A renderer: record in, file bytes out.
pub type Renderer = fn(&RunRecord) -> Vec<u8>;

/// Every report file, by name, with its renderer.
pub const RENDERERS: &[(&str, Renderer)] = &[
    ("report.json", json::render_bytes),
    ("report.md", markdown::render_bytes),
    ("samples.csv", csv::render),
    ("junit.xml", junit::render),
    ("report.html", html::render),
    ("report.sarif", sarif::render),
    ("attestation.intoto.json", intoto::render),
    ("bom.cdx.json", cyclonedx::render),
];

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// File name inside the output directory (no directories).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Render every report in [`RENDERERS`].
pub fn render_all(record: &RunRecord) -> Vec<Rendered> {
    RENDERERS.iter().map(|(name, f)| Rendered { name: (*name).to_string(), bytes: f(record) }).collect()
}
