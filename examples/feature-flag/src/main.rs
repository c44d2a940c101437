//! A downstream application as Burn users write one: the whole program is generic over one
//! `Backend` alias, and the `batch-invariant` Cargo feature swaps that alias for the
//! batch-invariant decorator. Nothing else in the code knows about it.
//!
//!     cargo run --release -p feature-flag-example                            # Burn's backend
//!     cargo run --release -p feature-flag-example --features batch-invariant # invariant
//!
//! It scores a batch of feature rows with a small MLP classifier (Linear, GELU, Linear,
//! log-softmax) and prints how far row 0's scores move when the batch grows. With the
//! feature on, it exits with status 1 if they move at all.

use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::backend::Backend as BackendTrait;
use burn::tensor::{Distribution, Tensor};

// The only lines that change with the feature. `burn::backend::Wgpu` is Burn's fused wgpu
// backend here (Burn's `fusion` feature is on, as it is by default), so the invariant
// alias wraps exactly what the application ran before.
#[cfg(not(feature = "cuda"))]
type Base = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
type Base = burn::backend::Cuda;
#[cfg(not(feature = "batch-invariant"))]
type Backend = Base;
#[cfg(feature = "batch-invariant")]
type Backend = burn_batch_invariant::BatchInvariant<Base>;

struct Classifier<B: BackendTrait> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: BackendTrait> Classifier<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            hidden: LinearConfig::new(1024, 2048).init(device),
            out: LinearConfig::new(2048, 4096).init(device),
        }
    }

    fn scores(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        log_softmax(self.out.forward(gelu(self.hidden.forward(x))), 1)
    }
}

fn main() {
    let device = Default::default();
    Backend::seed(&device, 42);
    let model = Classifier::<Backend>::new(&device);
    let rows = Tensor::<Backend, 2>::random([257, 1024], Distribution::Default, &device);
    let alone = model.scores(rows.clone().narrow(0, 0, 1));
    println!(
        "backend: {} (feature batch-invariant: {})",
        std::any::type_name::<Backend>(),
        cfg!(feature = "batch-invariant")
    );
    let mut worst = 0.0f32;
    for batch in [2, 3, 7, 64, 257] {
        let in_batch = model
            .scores(rows.clone().narrow(0, 0, batch))
            .narrow(0, 0, 1);
        let diff: f32 = (in_batch - alone.clone()).abs().max().into_scalar();
        println!("row 0 in a batch of {batch:>3}: max |difference| from row 0 alone = {diff:e}");
        worst = worst.max(diff);
    }
    if cfg!(feature = "batch-invariant") && worst != 0.0 {
        eprintln!("the batch-invariant backend let row 0 change with its batch");
        std::process::exit(1);
    }
}
