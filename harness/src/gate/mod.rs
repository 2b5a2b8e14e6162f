//! The gate: probe execution on both models, paired comparison, policy verdict (issue 3).
//!
//! * [`metrics`]: the closed set of metric names, their directions, and how a case's values are derived.
//! * [`policy`]: the policy file and [`policy::evaluate`], which turns a run record into a verdict.
//! * [`scan`]: the orchestration: audit, load, run the suites on both models, inside and trigger-search stages,
//!   verdict, reports.
//!
//! The statistics live in [`crate::stats`]; the record and its renderers in the `trapdoor-reports` crate.

pub mod metrics;
pub mod policy;
pub mod scan;
