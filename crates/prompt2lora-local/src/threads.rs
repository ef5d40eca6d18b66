//! The size of candle's CPU thread pool, which candle reads from the environment once per
//! process, when it first multiplies matrices.

use std::sync::OnceLock;

/// Threads used when the settings say nothing; see `bench/results/local-teacher.md`.
pub const DEFAULT_THREADS: usize = 0;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the pool for `threads` (0: one per core). Only the first call has an effect.
pub fn configure(threads: usize) {
    let first = *CONFIGURED.get_or_init(|| {
        if threads > 0 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            set_pool_size(threads);
        }
        threads
    });
    if first != threads {
        tracing::warn!(
            requested = threads,
            in_use = first,
            "the thread count is fixed by the first local teacher loaded in this process"
        );
    }
}

#[expect(unsafe_code, reason = "candle sizes its thread pools from the environment only")]
fn set_pool_size(threads: usize) {
    let value = threads.to_string();
    // SAFETY: runs once, before this crate starts any candle computation; the variables are
    // read by candle when its pools are first used. No other code of this crate touches the
    // environment concurrently.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", &value);
        std::env::set_var("RAYON_NUM_THREADS", &value);
    }
}
