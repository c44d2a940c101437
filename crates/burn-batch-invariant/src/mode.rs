//! The batch-invariant mode switch.
//!
//! One switch for the whole process, like vLLM's `enable/disable_batch_invariant_mode`:
//! a model is served from many threads (request handlers, data loaders) and they must all
//! agree on which kernels run. It is a single atomic, so reading and flipping it from any
//! number of threads is safe; a routed op reads it once, when it is called.
//!
//! At first use the switch takes its value from the environment variable
//! [`ENV_VAR`] (`BURN_BATCH_INVARIANT`): `1`, `true`, `on`, `yes` enable routing, `0`,
//! `false`, `off`, `no` disable it (any case, surrounding spaces ignored), unset means
//! enabled. Any other value panics with the value quoted: a typo must not silently turn off
//! the guarantee. This lets the same binary run an A/B comparison without recompiling:
//!
//! ```text
//! BURN_BATCH_INVARIANT=0 cargo run --release --bin ab_ops   # routed ops go to the inner backend
//! ```
//!
//! When the mode is off, every routed op calls the inner backend's method exactly as if the
//! decorator were absent.

use std::sync::atomic::{AtomicU8, Ordering};

/// Name of the environment variable read when the switch is first used.
pub const ENV_VAR: &str = "BURN_BATCH_INVARIANT";

/// Name of the environment variable read when the [`parity`] switch is first used (unset:
/// off). Same values as [`ENV_VAR`].
pub const PARITY_ENV_VAR: &str = "BURN_BATCH_INVARIANT_PARITY";

/// Name of the environment variable read when the [`ieee_f32`] switch is first used (unset:
/// off, TF32). Same values as [`ENV_VAR`].
pub const IEEE_F32_ENV_VAR: &str = "BURN_BATCH_INVARIANT_IEEE_F32";

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// A process-wide switch that takes its first value from an environment variable.
#[derive(Debug)]
struct Switch {
    state: AtomicU8,
    var: &'static str,
    default: bool,
    what: &'static str,
}

static ROUTING: Switch = Switch::new(ENV_VAR, true, "batch-invariant routing");
static PARITY: Switch = Switch::new(PARITY_ENV_VAR, false, "train/inference parity");
static IEEE_F32: Switch = Switch::new(IEEE_F32_ENV_VAR, false, "IEEE f32 matmuls");

impl Switch {
    const fn new(var: &'static str, default: bool, what: &'static str) -> Self {
        Self {
            state: AtomicU8::new(UNSET),
            var,
            default,
            what,
        }
    }

    fn parse(&self, value: Option<&str>) -> Result<bool, String> {
        let Some(raw) = value else {
            return Ok(self.default);
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(true),
            "0" | "false" | "off" | "no" => Ok(false),
            _ => Err(format!(
                "{}={raw:?} is not a valid value: use 1/true/on/yes to enable {} or \
                 0/false/off/no to disable it",
                self.var, self.what
            )),
        }
    }

    /// The current state, reading the environment variable on first use.
    fn state(&self) -> u8 {
        let current = self.state.load(Ordering::Acquire);
        if current != UNSET {
            return current;
        }
        let from_env = std::env::var(self.var).ok();
        let enabled = self
            .parse(from_env.as_deref())
            .unwrap_or_else(|msg| panic!("{msg}"));
        // Another thread may have initialised or set the switch meanwhile; its value wins.
        match self.state.compare_exchange(
            UNSET,
            encode(enabled),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => encode(enabled),
            Err(existing) => existing,
        }
    }

    fn is_on(&self) -> bool {
        self.state() == ON
    }

    /// Sets the switch and returns its previous value.
    fn set(&self, enabled: bool) -> bool {
        self.state(); // an invalid environment value is reported even when the first call is a set
        self.state.swap(encode(enabled), Ordering::AcqRel) == ON
    }
}

/// Parses a value of [`ENV_VAR`]. `None` means "unset"; an unknown value is an error that
/// quotes it.
pub fn parse_env_value(value: Option<&str>) -> Result<bool, String> {
    ROUTING.parse(value)
}

fn encode(enabled: bool) -> u8 {
    if enabled {
        ON
    } else {
        OFF
    }
}

/// Whether routed ops currently use the batch-invariant kernels.
pub fn is_enabled() -> bool {
    ROUTING.is_on()
}

/// Sets the switch and returns its previous value.
pub fn set_enabled(enabled: bool) -> bool {
    ROUTING.set(enabled)
}

/// Routes the batch-sensitive ops to the batch-invariant kernels (the default).
pub fn enable() {
    set_enabled(true);
}

/// Sends the routed ops to the inner backend, as if the decorator were absent.
pub fn disable() {
    set_enabled(false);
}

/// Sets the switch until the returned guard is dropped, then restores the value it had
/// before, also when the scope is left by a panic.
///
/// Guards nest. They restore what they saw, so guards taken on several threads at once and
/// dropped out of order leave the value of whichever drop came last; around concurrent work,
/// hold one guard on the thread that starts it rather than one per worker thread.
#[must_use = "the mode is restored when the guard is dropped"]
pub fn scoped(enabled: bool) -> ModeGuard {
    ModeGuard {
        switch: &ROUTING,
        previous: set_enabled(enabled),
    }
}

/// Restores the value its switch had before [`scoped`] (or [`parity::scoped`],
/// [`ieee_f32::scoped`]) when dropped.
#[derive(Debug)]
pub struct ModeGuard {
    switch: &'static Switch,
    previous: bool,
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        self.switch
            .state
            .store(encode(self.previous), Ordering::Release);
    }
}

/// The train/inference parity switch (off unless [`PARITY_ENV_VAR`] says otherwise).
///
/// `Autodiff<B>` in Burn 0.21 computes `softmax`, `log_softmax`, `layer_norm` and
/// `attention` with its own composites of primitives, never with `B`'s methods, and so does
/// our [`crate::rms_norm`] under `Autodiff` (burn-nn's chain), so a training forward cannot
/// reach the fused invariant kernels. Both are batch invariant, but nothing makes their bits
/// agree (attention's and the norms' differ; softmax's agreed on lavapipe and on the H100 in
/// the tests). With parity on, `BatchInvariant` runs those five ops through the very
/// composites `Autodiff` runs (over the same routed primitives), so an inference forward
/// gives the bits of the training forward: what on-policy RL needs, at the cost of the fused
/// kernels' speed (attention materialises its scores). Every other routed op already has
/// parity.
pub mod parity {
    use super::{ModeGuard, PARITY};

    /// Whether `softmax`, `log_softmax`, `layer_norm`, `rms_norm` and `attention` run
    /// `Autodiff`'s composites.
    pub fn is_enabled() -> bool {
        PARITY.is_on()
    }

    /// Sets the parity switch and returns its previous value.
    pub fn set_enabled(enabled: bool) -> bool {
        PARITY.set(enabled)
    }

    /// Sets the parity switch until the returned guard is dropped (see [`super::scoped`]).
    #[must_use = "the parity switch is restored when the guard is dropped"]
    pub fn scoped(enabled: bool) -> ModeGuard {
        ModeGuard {
            switch: &PARITY,
            previous: set_enabled(enabled),
        }
    }
}

/// The f32 matmul precision switch (off, TF32, unless [`IEEE_F32_ENV_VAR`] says otherwise).
///
/// An f32 `matmul` or `linear` runs on the tensor cores in TF32 by default: the precision
/// class of Burn's own f32 matmul on the same GPU and of vLLM's Triton matmul, with operands
/// rounded to 10 mantissa bits. With this switch on, f32 products run the portable kernel
/// instead: one IEEE f32 multiply-add per k on the operands as stored (the class of torch's
/// `mm` with TF32 off), on the CUDA cores, several times slower. Both are batch invariant;
/// their bits differ, and the bounds are in docs/contract.md. An op reads the switch when it
/// is called; f16 and bf16, and runtimes without tensor cores (where f32 is IEEE already),
/// are unaffected.
pub mod ieee_f32 {
    use super::{ModeGuard, IEEE_F32};

    /// Whether f32 matmuls run in IEEE f32 rather than TF32.
    pub fn is_enabled() -> bool {
        IEEE_F32.is_on()
    }

    /// Sets the IEEE f32 switch and returns its previous value.
    pub fn set_enabled(enabled: bool) -> bool {
        IEEE_F32.set(enabled)
    }

    /// Sets the IEEE f32 switch until the returned guard is dropped (see [`super::scoped`]).
    #[must_use = "the IEEE f32 switch is restored when the guard is dropped"]
    pub fn scoped(enabled: bool) -> ModeGuard {
        ModeGuard {
            switch: &IEEE_F32,
            previous: set_enabled(enabled),
        }
    }
}
