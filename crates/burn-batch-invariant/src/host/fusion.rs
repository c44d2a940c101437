//! `KernelHost` for `Fusion<B>`, the form Burn's default `Cuda` and `Wgpu` backends take.
//!
//! Fusion records ops into a stream and compiles runs of them into fused kernels, choosing
//! the fused kernels' shapes with its own autotuner. A routed op must not enter that
//! machinery: it is registered as a custom operation, which the fusion stream never merges
//! with its neighbours, and which runs the inner backend's invariant kernel when the stream
//! executes. The ops on either side keep fusing with each other. This is the pattern
//! burn-vision 0.21 uses for its own kernels.

use core::marker::PhantomData;

use batch_invariant_kernels::attention::AttentionOptions;
use batch_invariant_kernels::extremum::ExtremumOp;
use batch_invariant_kernels::matmul::launch::matmul_output_shape;
use batch_invariant_kernels::matmul::F32Precision;
use batch_invariant_kernels::norm::NormKind;
use batch_invariant_kernels::reduce::ReduceOp;
use batch_invariant_kernels::softmax::SoftmaxKind;
use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{DType, IntDType, Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::{reduced_shape, KernelHost};

/// Which invariant kernel a custom operation runs, with its non-tensor arguments. The
/// tensors travel in the operation's `CustomOpIr`, in the order each arm reads them.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    ReduceDim {
        dim: usize,
        op: ReduceOp,
    },
    Softmax {
        dim: usize,
        kind: SoftmaxKind,
    },
    Matmul {
        bias: bool,
        precision: F32Precision,
    },
    Extremum {
        dim: usize,
        op: ExtremumOp,
        index_dtype: IntDType,
    },
    Norm {
        epsilon: f64,
        beta: bool,
        kind: NormKind,
    },
    Attention {
        options: AttentionOptions,
        mask: bool,
        bias: bool,
    },
    AttentionBackward {
        options: AttentionOptions,
    },
}

impl Kernel {
    fn name(&self) -> &'static str {
        match self {
            Kernel::ReduceDim { .. } => "batch_invariant_reduce_dim",
            Kernel::Softmax { .. } => "batch_invariant_softmax",
            Kernel::Matmul { .. } => "batch_invariant_matmul",
            Kernel::Extremum { .. } => "batch_invariant_extremum",
            Kernel::Norm { .. } => "batch_invariant_norm",
            Kernel::Attention { .. } => "batch_invariant_attention",
            Kernel::AttentionBackward { .. } => "batch_invariant_attention_backward",
        }
    }
}

/// The custom operation: when the stream reaches it, fetch the inner backend's tensors,
/// run the inner backend's invariant kernel, hand the outputs back to the stream.
#[derive(Debug)]
struct InvariantOp<B> {
    desc: CustomOpIr,
    kernel: Kernel,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend + KernelHost> Operation<B::FusionRuntime> for InvariantOp<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let mut inputs = self
            .desc
            .inputs
            .iter()
            .map(|ir| handles.get_float_tensor::<B>(ir))
            .collect::<Vec<_>>()
            .into_iter();
        let mut next = || inputs.next().expect("custom op inputs match its kernel");
        let outputs = &self.desc.outputs;
        match self.kernel {
            Kernel::ReduceDim { dim, op } => {
                let out = B::invariant_reduce_dim(next(), dim, op);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kernel::Softmax { dim, kind } => {
                let out = B::invariant_softmax(next(), dim, kind);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kernel::Matmul { bias, precision } => {
                let (lhs, rhs) = (next(), next());
                let bias = bias.then(&mut next);
                let out = B::invariant_matmul(lhs, rhs, bias, precision);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kernel::Extremum {
                dim,
                op,
                index_dtype,
            } => {
                let (values, indices) = B::invariant_extremum(next(), dim, op, index_dtype);
                handles.register_float_tensor::<B>(&outputs[0].id, values);
                handles.register_int_tensor::<B>(&outputs[1].id, indices);
            }
            Kernel::Norm {
                epsilon,
                beta,
                kind,
            } => {
                let (tensor, gamma) = (next(), next());
                let beta = beta.then(&mut next);
                let out = B::invariant_norm(tensor, gamma, beta, epsilon, kind);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kernel::Attention {
                options,
                mask,
                bias,
            } => {
                let (query, key, value) = (next(), next(), next());
                let mask = mask.then(&mut next);
                let bias = bias.then(&mut next);
                let out = B::invariant_attention(query, key, value, mask, bias, options);
                handles.register_float_tensor::<B>(&outputs[0].id, out);
            }
            Kernel::AttentionBackward { options } => {
                let [query, key, value, output, grad] = [(); 5].map(|_| next());
                let grads =
                    B::invariant_attention_backward(query, key, value, output, grad, options);
                for (ir, grad) in outputs.iter().zip(grads) {
                    handles.register_float_tensor::<B>(&ir.id, grad);
                }
            }
        }
    }
}

/// Registers `kernel` in the fusion stream of its inputs, with outputs of the given shapes
/// and dtypes, and returns the output tensors (not computed until the stream runs).
fn register<B: FusionBackend + KernelHost>(
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    outputs: &[(Shape, DType)],
    kernel: Kernel,
) -> Vec<FusionTensor<B::FusionRuntime>> {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(&inputs);
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let outputs: Vec<TensorIr> = outputs
        .iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape.clone(), *dtype))
        .collect();
    let desc = CustomOpIr::new(kernel.name(), &inputs, &outputs);
    let op = InvariantOp::<B> {
        desc: desc.clone(),
        kernel,
        _backend: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

fn single<R: FusionRuntime>(mut outputs: Vec<FusionTensor<R>>) -> FusionTensor<R> {
    outputs.pop().expect("one output")
}

impl<B: FusionBackend + KernelHost> KernelHost for Fusion<B> {
    fn invariant_reduce_dim(
        tensor: FloatTensor<Self>,
        dim: usize,
        op: ReduceOp,
    ) -> FloatTensor<Self> {
        let out = (reduced_shape(&tensor, dim), tensor.dtype);
        single(register::<B>(
            vec![tensor],
            &[out],
            Kernel::ReduceDim { dim, op },
        ))
    }

    fn invariant_softmax(
        tensor: FloatTensor<Self>,
        dim: usize,
        kind: SoftmaxKind,
    ) -> FloatTensor<Self> {
        let out = (tensor.shape(), tensor.dtype);
        single(register::<B>(
            vec![tensor],
            &[out],
            Kernel::Softmax { dim, kind },
        ))
    }

    fn invariant_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        precision: F32Precision,
    ) -> FloatTensor<Self> {
        let shape = matmul_output_shape(&lhs.shape(), &rhs.shape())
            .unwrap_or_else(|err| panic!("batch-invariant matmul: {err}"));
        let out = (Shape::from(shape), lhs.dtype);
        let kernel = Kernel::Matmul {
            bias: bias.is_some(),
            precision,
        };
        let inputs = [lhs, rhs].into_iter().chain(bias).collect();
        single(register::<B>(inputs, &[out], kernel))
    }

    fn invariant_extremum(
        tensor: FloatTensor<Self>,
        dim: usize,
        op: ExtremumOp,
        index_dtype: IntDType,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let shape = reduced_shape(&tensor, dim);
        let outputs = [
            (shape.clone(), tensor.dtype),
            (shape, DType::from(index_dtype)),
        ];
        let mut out = register::<B>(
            vec![tensor],
            &outputs,
            Kernel::Extremum {
                dim,
                op,
                index_dtype,
            },
        )
        .into_iter();
        let values = out.next().expect("values output");
        let indices = out.next().expect("indices output");
        (values, indices)
    }

    fn invariant_norm(
        tensor: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
        kind: NormKind,
    ) -> FloatTensor<Self> {
        let out = (tensor.shape(), tensor.dtype);
        let kernel = Kernel::Norm {
            epsilon,
            beta: beta.is_some(),
            kind,
        };
        let inputs = [tensor, gamma].into_iter().chain(beta).collect();
        single(register::<B>(inputs, &[out], kernel))
    }

    fn invariant_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        bias: Option<FloatTensor<Self>>,
        options: AttentionOptions,
    ) -> FloatTensor<Self> {
        let mut shape = query.shape();
        shape[3] = value.shape()[3];
        let out = (shape, query.dtype);
        let kernel = Kernel::Attention {
            options,
            mask: mask.is_some(),
            bias: bias.is_some(),
        };
        let mut inputs = vec![query, key, value];
        inputs.extend(mask);
        inputs.extend(bias);
        single(register::<B>(inputs, &[out], kernel))
    }

    fn invariant_attention_backward_supported(
        device: &Self::Device,
        dtype: DType,
        dim: usize,
        dim_v: usize,
    ) -> bool {
        B::invariant_attention_backward_supported(device, dtype, dim, dim_v)
    }

    fn invariant_attention_backward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: AttentionOptions,
    ) -> [FloatTensor<Self>; 3] {
        let outputs = [&query, &key, &value].map(|t| (t.shape(), t.dtype));
        let inputs = vec![query, key, value, output, grad];
        let mut grads =
            register::<B>(inputs, &outputs, Kernel::AttentionBackward { options }).into_iter();
        [(); 3].map(|_| grads.next().expect("three gradients"))
    }
}
