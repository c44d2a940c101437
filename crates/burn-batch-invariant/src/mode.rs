//! The batch-invariant mode switch.
//!
//! One switch for the whole process, like the seed's `enable/disable_batch_invariant_mode`:
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

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Parses a value of [`ENV_VAR`]. `None` means "unset"; an unknown value is an error that
/// quotes it.
pub fn parse_env_value(value: Option<&str>) -> Result<bool, String> {
    let Some(raw) = value else {
        return Ok(true);
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(format!(
            "{ENV_VAR}={raw:?} is not a valid value: use 1/true/on/yes to enable batch-invariant \
             routing or 0/false/off/no to disable it"
        )),
    }
}

fn encode(enabled: bool) -> u8 {
    if enabled {
        ON
    } else {
        OFF
    }
}

/// The current state, reading [`ENV_VAR`] on first use.
fn state() -> u8 {
    let current = STATE.load(Ordering::Acquire);
    if current != UNSET {
        return current;
    }
    let from_env = std::env::var(ENV_VAR).ok();
    let enabled = parse_env_value(from_env.as_deref()).unwrap_or_else(|msg| panic!("{msg}"));
    // Another thread may have initialised or set the switch meanwhile; its value wins.
    match STATE.compare_exchange(UNSET, encode(enabled), Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => encode(enabled),
        Err(existing) => existing,
    }
}

/// Whether routed ops currently use the batch-invariant kernels.
pub fn is_enabled() -> bool {
    state() == ON
}

/// Sets the switch and returns its previous value.
pub fn set_enabled(enabled: bool) -> bool {
    state(); // an invalid environment value is reported even when the first call is a set
    STATE.swap(encode(enabled), Ordering::AcqRel) == ON
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
        previous: set_enabled(enabled),
    }
}

/// Restores the previous mode when dropped; see [`scoped`].
#[derive(Debug)]
pub struct ModeGuard {
    previous: bool,
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        STATE.store(encode(self.previous), Ordering::Release);
    }
}
