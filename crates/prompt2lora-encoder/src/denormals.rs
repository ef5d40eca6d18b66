//! Denormal floats flushed to zero on the threads that run the encoder.
//!
//! On Intel cores a multiply or add with a denormal operand (below about 1.2e-38 in f32) takes
//! a microcode assist of around a hundred cycles. Training meets such values in its gradients,
//! and on a 2-core Intel Xeon it ran about 6x slower with them than with the flush-to-zero and
//! denormals-are-zero flags set (`bench/results/train.md`); AMD cores handle them at full speed.
//! Numbers that small carry nothing a classifier needs.
//!
//! Written by hand because setting two bits of the SSE control register is two instructions,
//! and the crates that do it scope the flags to one closure on one thread, not to the threads of
//! a pool that outlives the call.

use std::sync::Once;

/// Sets flush-to-zero and denormals-are-zero on the calling thread and, the first time, on
/// every thread of the current rayon pool. Cheap enough to call before every forward pass.
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
