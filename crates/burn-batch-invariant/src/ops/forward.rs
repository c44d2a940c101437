//! The two shapes of a backend method in `BatchInvariant<B>`, written once.
//!
//! Both take methods as they are declared in Burn's ops traits (`fn name(args) -> Out;`), so
//! an ops file reads as the list of the trait's methods, sorted by what happens to them.

/// Forwards each listed method to `B`'s method of the same name with the same arguments, so
/// `B`'s own kernel runs, including where `B` overrides a trait default with a faster one.
///
/// `=> lift` after a signature moves a `TensorPrimitive<B>` result to
/// `TensorPrimitive<Self>` (the two hold the same primitives).
macro_rules! forward {
    (@call $name:ident($($arg:ident),*) lift) => {
        lift(B::$name($($arg),*))
    };
    (@call $name:ident($($arg:ident),*)) => {
        B::$name($($arg),*)
    };
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $(=> $wrap:ident)?;)*) => {
        $(
            fn $name($($arg: $ty),*) $(-> $ret)? {
                forward!(@call $name($($arg),*) $($wrap)?)
            }
        )*
    };
}

/// Routes each listed method through the [mode](crate::mode) switch, the one place it is
/// read for backend methods: on, `crate::routing::<family>::<name>` (the checks and the
/// invariant kernel); off, `B`'s method, exactly as if the decorator were absent.
macro_rules! route {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $family:ident;)*) => {
        $(
            fn $name($($arg: $ty),*) -> $ret {
                if $crate::mode::is_enabled() {
                    $crate::routing::$family::$name::<B>($($arg),*)
                } else {
                    B::$name($($arg),*)
                }
            }
        )*
    };
}
