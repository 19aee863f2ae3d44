//! Run-time dispatch to the widest vector instruction set of the CPU.

/// Runs `op` (a closure, or a [`pulp::WithSimd`] for bodies too large for a closure to be
/// inlined) compiled for the best vector instruction set this CPU has (AVX-512 or AVX2 with
/// FMA on x86-64, picked once at run time): the loops inside are vectorised for it instead of
/// for the baseline the binary is built for (SSE2). Everything `op` calls must be inlined into
/// it for that to apply (hence the `#[inline(always)]` on the helpers).
#[inline(always)]
pub(crate) fn simd<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    static ARCH: std::sync::LazyLock<pulp::Arch> = std::sync::LazyLock::new(pulp::Arch::new);
    ARCH.dispatch(op)
}
