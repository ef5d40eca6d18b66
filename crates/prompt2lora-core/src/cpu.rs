//! Settings of the threads that run the models (the student encoder and the local teacher):
//! candle's idle workers told not to spin, and denormal floats flushed to zero.

use std::sync::Once;

/// Makes candle's idle CPU workers sleep at once instead of spinning, unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` says otherwise. The encoder's own kernels run on rayon's
/// pool; candle's workers spinning between its ops took cores from them: training ran 14%
/// faster on 2 cores without the spin (bench/results/train.md). Call it first thing in `main`,
/// before other threads start (or at least before candle's pool first runs, which is when
/// candle reads the variable, and while nothing else touches the environment).
pub fn quiet_candle_workers() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        set_no_spin();
    }
}

#[expect(
    unsafe_code,
    reason = "candle configures its thread pool from the environment only"
)]
fn set_no_spin() {
    // SAFETY: documented to be called at the start of `main` or, in the local teacher, once
    // before its first computation, when nothing reads or writes the environment concurrently.
    unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") }
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread and, the first time, on
/// every thread of the current rayon pool. Cheap enough to call before every forward pass.
///
/// On Intel cores a multiply or add with a denormal operand (below about 1.2e-38 in f32) takes
/// a microcode assist of around a hundred cycles. Training meets such values in its gradients,
/// and on a 2-core Intel Xeon it ran about 6x slower with them than with the flags set
/// (`bench/results/train.md`); AMD cores handle them at full speed. Numbers that small carry
/// nothing a classifier needs.
///
/// Written by hand because setting two bits of the SSE control register is two instructions,
/// and the crates that do it scope the flags to one closure on one thread, not to the threads
/// of a pool that outlives the call.
pub fn flush_denormals() {
    set_on_this_thread();
    static POOL: Once = Once::new();
    POOL.call_once(|| {
        rayon::broadcast(|_| set_on_this_thread());
    });
}

#[cfg(target_arch = "x86_64")]
#[expect(
    unsafe_code,
    reason = "the SSE control register is reached by assembly only"
)]
fn set_on_this_thread() {
    /// MXCSR bits: flush to zero (15) and denormals are zero (6).
    const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
    let mut csr: u32 = 0;
    // SAFETY: `stmxcsr` stores the 32-bit control register at a valid, aligned address;
    // `ldmxcsr` loads it back with two more bits set, which only changes how denormal values
    // are rounded on this thread.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_on_this_thread() {}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn denormals_become_zero() {
        super::flush_denormals();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        assert_eq!(std::hint::black_box(tiny * 0.5), 0.0);
        let on_pool = rayon::broadcast(|_| {
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            std::hint::black_box(tiny * 0.5) == 0.0
        });
        assert!(on_pool.iter().all(|&zero| zero));
    }
}
