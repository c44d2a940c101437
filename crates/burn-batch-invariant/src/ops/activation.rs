//! `ActivationOps`: `softmax` and `log_softmax` routed (`crate::routing::softmax`), `softmin`
//! left to its default body (it calls the routed `softmax`), the rest forwarded to `B`.

use burn_backend::ops::ActivationOps;
use burn_backend::tensor::FloatTensor;
use burn_backend::Scalar;

use crate::{BatchInvariant, KernelHost};

impl<B: KernelHost> ActivationOps<Self> for BatchInvariant<B> {
    // default-body: softmin
    // `softmin` is `softmax(-x)`: its default body reaches our routed `softmax`.

    route! {
        fn softmax(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> => softmax;
        fn log_softmax(tensor: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> => softmax;
    }

    forward! {
        fn leaky_relu(tensor: FloatTensor<Self>, negative_slope: Scalar) -> FloatTensor<Self>;
        fn relu(tensor: FloatTensor<Self>) -> FloatTensor<Self>;
        fn relu_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn gelu(tensor: FloatTensor<Self>) -> FloatTensor<Self>;
        fn prelu(tensor: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self>;
        fn gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
        fn sigmoid(tensor: FloatTensor<Self>) -> FloatTensor<Self>;
        fn sigmoid_backward(
            output: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> FloatTensor<Self>;
        fn hard_sigmoid(
            tensor: FloatTensor<Self>,
            alpha: Scalar,
            beta: Scalar,
        ) -> FloatTensor<Self>;
        fn log_sigmoid(tensor: FloatTensor<Self>) -> FloatTensor<Self>;
        fn log_sigmoid_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    }
}
