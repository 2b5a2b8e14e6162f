//! The CPU thread default of the long-running model commands (`scan`, `selftest`, `demo`, `invert`).
//!
//! candle 0.11 (`candle_core::utils`) sizes two CPU pools once per process, at their first use:
//! * the rayon pool that runs matrix products (gemm): `RAYON_NUM_THREADS`, else the physical core count;
//! * the barrier pool of element-wise and quantized kernels: `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else
//!   the physical core count. Its workers spin up to 25,000 times before parking, and the calling thread spins until
//!   every worker is done, so on a busy machine one descheduled worker turns into a core spent waiting.
//!
//! When the user set neither variable, these commands set `CANDLE_NUM_THREADS` to [`DEFAULT_CANDLE_THREADS`] before
//! any tensor exists: the spinning pool is off and matrix products keep every core. A value the user set is never
//! replaced: `CANDLE_NUM_THREADS=N` / `RAYON_NUM_THREADS=N` choose the pools' sizes as in plain candle.
//! Figures: README, section on the runtime.

/// Threads of candle's barrier pool when the user set no thread variable (1: no worker threads, no spinning).
pub const DEFAULT_CANDLE_THREADS: usize = 1;

/// Set the default unless `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS` is set (even to a value candle ignores).
/// Call first thing in the command, while the process has a single thread and before any tensor op.
pub fn apply_default() {
    if let Some(n) = default_for(std::env::var_os("CANDLE_NUM_THREADS"), std::env::var_os("RAYON_NUM_THREADS")) {
        std::env::set_var("CANDLE_NUM_THREADS", n);
    }
}

/// The `CANDLE_NUM_THREADS` value to set given the two variables as found, or `None` to leave the user's choice.
fn default_for(candle: Option<std::ffi::OsString>, rayon: Option<std::ffi::OsString>) -> Option<String> {
    (candle.is_none() && rayon.is_none()).then(|| DEFAULT_CANDLE_THREADS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_variable_the_user_set_is_never_replaced() {
        assert_eq!(default_for(None, None), Some(DEFAULT_CANDLE_THREADS.to_string()));
        assert_eq!(default_for(Some("4".into()), None), None);
        assert_eq!(default_for(None, Some("2".into())), None);
        assert_eq!(default_for(Some("0".into()), Some("3".into())), None);
    }
}
