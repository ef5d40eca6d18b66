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
        let unset = |name: &str| std::env::var_os(name).is_none();
        let size = (threads > 0 && unset("CANDLE_NUM_THREADS")).then_some(threads);
        // Spinning workers fight the computing ones for cores on a shared machine: there,
        // 2 threads decoded 1.3x faster and scored choices 1.7x faster without spinning than
        // with candle's default spin (bench/results/local-teacher.md).
        let no_spin = unset("CANDLE_BARRIER_POOL_SPIN_LIMIT");
        set_pool_environment(size, no_spin);
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
fn set_pool_environment(threads: Option<usize>, no_spin: bool) {
    // SAFETY: runs once, before this crate starts any candle computation; the variables are
    // read by candle when its pools are first used. No other code of this crate touches the
    // environment concurrently.
    unsafe {
        if let Some(threads) = threads {
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
        if no_spin {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
        }
    }
}
