//! The size of candle's CPU thread pool, which candle reads from the environment once per
//! process, when it first multiplies matrices.

use std::sync::OnceLock;

/// Threads used when the settings say nothing: one per core. On a quiet 2-core machine two
/// threads read prompts 1.8x and generate 1.8x as fast as one (`bench/results/local-teacher.md`);
/// on a machine shared with other jobs, fewer threads than cores can be faster.
pub const DEFAULT_THREADS: usize = 0;

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the pool for `threads` (0: one per core) and makes idle workers sleep at once
/// instead of spinning. Only the first call has an effect; the environment wins.
pub fn configure(threads: usize) {
    let first = *CONFIGURED.get_or_init(|| {
        if threads > 0 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            set_pool_size(threads);
        }
        // Spinning workers fight the computing ones for cores on a shared machine: there,
        // 2 threads decoded 1.3x faster and scored choices 1.7x faster without spinning than
        // with candle's default spin (bench/results/local-teacher.md).
        prompt2lora_core::cpu::quiet_candle_workers();
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

#[expect(
    unsafe_code,
    reason = "candle sizes its thread pools from the environment only"
)]
fn set_pool_size(threads: usize) {
    // SAFETY: runs once, before this crate starts any candle computation; the variables are
    // read by candle when its pools are first used. No other code of this crate touches the
    // environment concurrently.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
