//! The process-wide mode switch: nesting, restore on panic, concurrent use, the environment
//! variable, and "off" meaning exactly the inner backend.

use std::process::Command;

use batch_invariant_kernels::reduce::ReduceOp;
use burn::tensor::{FloatDType, Tensor};
use burn_batch_invariant::mode;
use burn_batch_invariant_tests::*;

#[test]
fn mode_env_values_parse() {
    for on in ["1", "true", "ON", " yes ", "True"] {
        assert_eq!(mode::parse_env_value(Some(on)), Ok(true), "{on:?}");
    }
    for off in ["0", "false", "Off", "no", " FALSE"] {
        assert_eq!(mode::parse_env_value(Some(off)), Ok(false), "{off:?}");
    }
    assert_eq!(mode::parse_env_value(None), Ok(true));
    for bad in ["", "2", "enabled", "of"] {
        let err = mode::parse_env_value(Some(bad)).unwrap_err();
        assert!(
            err.contains(mode::ENV_VAR) && err.contains(&format!("{bad:?}")),
            "{err}"
        );
    }
}

#[test]
fn mode_scoped_guards_nest_and_restore() {
    let _lock = mode_exclusive();
    mode::enable();
    assert!(mode::is_enabled());
    {
        let _off = mode::scoped(false);
        assert!(!mode::is_enabled());
        {
            let _on = mode::scoped(true);
            assert!(mode::is_enabled());
        }
        assert!(!mode::is_enabled());
        mode::enable(); // a plain set inside a scope is undone by the scope's end
        assert!(mode::is_enabled());
    }
    assert!(mode::is_enabled());
    assert!(mode::set_enabled(false));
    assert!(!mode::set_enabled(true));
}

#[test]
fn mode_scoped_guard_restores_on_panic() {
    let _lock = mode_exclusive();
    mode::enable();
    let result = std::panic::catch_unwind(|| {
        let _off = mode::scoped(false);
        assert!(!mode::is_enabled());
        panic!("leaving the scope by a panic");
    });
    assert!(result.is_err());
    assert!(
        mode::is_enabled(),
        "the guard must restore the mode while unwinding"
    );
}

#[test]
fn mode_is_safe_under_concurrent_use() {
    let _lock = mode_exclusive();
    mode::enable();
    // Many threads flipping and reading the switch: no torn state, and every thread sees
    // only values some thread wrote.
    std::thread::scope(|s| {
        for t in 0..8 {
            s.spawn(move || {
                for i in 0..2000 {
                    let _g = mode::scoped((i + t) % 3 != 0);
                    let _ = mode::is_enabled();
                }
            });
        }
    });
    mode::enable();
    // One guard held around concurrent work: every worker sees its value.
    let _off = mode::scoped(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(mode::is_enabled)).collect();
        for h in handles {
            assert!(!h.join().unwrap());
        }
    });
    drop(_off);
    assert!(mode::is_enabled());
}

/// Child half of `mode_environment_variable`: does nothing unless spawned by it.
#[test]
fn mode_env_child() {
    let Ok(expect) = std::env::var("BI_MODE_CHILD_EXPECT") else {
        return;
    };
    assert_eq!(
        mode::is_enabled(),
        expect == "on",
        "mode read from {}",
        mode::ENV_VAR
    );
}

fn run_child(value: &str, expect: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "mode_switch::mode_env_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(mode::ENV_VAR, value)
        .env("BI_MODE_CHILD_EXPECT", expect)
        .output()
        .expect("spawn the test executable")
}

#[test]
fn mode_environment_variable() {
    for (value, expect) in [("0", "off"), ("off", "off"), ("1", "on"), ("true", "on")] {
        let out = run_child(value, expect);
        assert!(
            out.status.success(),
            "{}={value}: expected mode {expect}\n{}{}",
            mode::ENV_VAR,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run_child("maybe", "on");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "an invalid value must not be accepted"
    );
    assert!(
        text.contains("BURN_BATCH_INVARIANT=\"maybe\" is not a valid value"),
        "{text}"
    );
}

fn off_means_inner_backend<B: KernelHost>(device: &B::Device) {
    let _lock = mode_exclusive();
    let values_in = random_values(300 * 1000, 77);
    let x_inner = tensor::<B, 2>(values_in.clone(), [300, 1000], FloatDType::F32, device);
    let x_wrapped = tensor::<BatchInvariant<B>, 2>(values_in, [300, 1000], FloatDType::F32, device);
    let run = |op: ReduceOp, dim: usize| {
        let inner = match op {
            ReduceOp::Mean => x_inner.clone().mean_dim(dim),
            ReduceOp::Sum => x_inner.clone().sum_dim(dim),
            ReduceOp::Prod => x_inner.clone().prod_dim(dim),
        };
        let wrapped = match op {
            ReduceOp::Mean => x_wrapped.clone().mean_dim(dim),
            ReduceOp::Sum => x_wrapped.clone().sum_dim(dim),
            ReduceOp::Prod => x_wrapped.clone().prod_dim(dim),
        };
        (bits(inner), bits(wrapped))
    };
    let _off = mode::scoped(false);
    for op in [ReduceOp::Mean, ReduceOp::Sum, ReduceOp::Prod] {
        for dim in [0, 1] {
            let (inner, wrapped) = run(op, dim);
            assert!(
                inner == wrapped,
                "mode off: {op:?} dim {dim} must be the inner backend's"
            );
        }
    }
    // And on again: the wrapped result is the invariant kernel's, which matches the same
    // row computed alone.
    let _on = mode::scoped(true);
    let alone = x_wrapped.clone().narrow(0, 5, 1).mean_dim(1);
    let inside = x_wrapped.clone().mean_dim(1).narrow(0, 5, 1);
    assert!(bits(alone) == bits(inside));
}

#[test]
fn mode_off_routes_to_inner_backend_exactly() {
    on_test_backend!(off_means_inner_backend);
}

#[test]
fn mode_switch_works_in_scoped_threads_with_tensors() {
    let _lock = mode_exclusive();
    fn case<B: KernelHost>(device: &B::Device) {
        let x = Tensor::<BatchInvariant<B>, 2>::ones([4, 64], device);
        std::thread::scope(|s| {
            let h = s.spawn(|| values(x.clone().mean_dim(1)));
            assert!(h.join().unwrap().iter().all(|v| *v == 1.0));
        });
    }
    on_test_backend!(case);
}
