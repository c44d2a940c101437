//! The `linear` bias added in the tensor-core matmul's epilogue.
//!
//! For f16 and bf16, `x @ W + b` computed as a matmul and then an add rounds twice: the
//! f32 accumulator to the output dtype, then the sum with the bias. vLLM's batch-invariant
//! `addmm_batch_invariant` (a Triton kernel) adds the bias to the f32 accumulator and
//! rounds once; so does this module. The tensor-core kernel stays cubek's, with its own
//! tiles, loaders and K walk; what changes is only its output. cubek hands every finished
//! output vector to the output *view* of its `MatmulArgs` as `f32` (the output is declared
//! f32, so the value is the accumulator itself, never rounded). The view here is
//! [`BiasedStore`]: its write adds the bias of the vector's columns in f32 and stores the sum
//! rounded to the output dtype.
//!
//! Nothing is loaded into the accumulators before the K loop (cubek's accumulator input
//! gives wrong results with the warp-specialized routine), and nothing is staged beyond the
//! f32 output tiles cubek stages anyway: the bias is read per output vector from global
//! memory, where one row of it serves every row of the output.

use core::marker::PhantomData;

use cubecl::prelude::barrier::BarrierExpand;
use cubecl::prelude::*;
use cubecl::std::tensor::launch::ViewArg;
use cubecl::std::tensor::layout::{Coords1d, VirtualLayout, VirtualLayoutLaunch};
use cubecl::std::tensor::{
    View, ViewOperations, ViewOperationsExpand, ViewOperationsMut, ViewOperationsMutExpand,
};
use cubek::matmul::components::global::memory::GlobalLayoutConfig;
use cubek::matmul::components::global::memory::{
    BatchLayout, BatchLayoutLaunch, GlobalLayout, GlobalLayoutLaunch,
};
use cubek::matmul::definition::{
    Blueprint as _, MatmulProblem, MatmulVectorSizes, TilingBlueprint,
};
use cubek::matmul::launch::{AccSize, BatchedCoords, MatmulArgs, TensorMapInputs};

/// The output and the bias in the output dtype `O`, as vectors of the matmul's output
/// vector size (which divides N, so one output vector never straddles two rows).
#[derive(CubeType, CubeLaunch, Clone)]
pub struct BiasedStore<O: Numeric> {
    out: Tensor<Vector<O, AccSize>>,
    bias: Tensor<Vector<O, AccSize>>,
    /// Vectors per output row. The output is contiguous, so a vector's position modulo this
    /// is the position of its columns' bias.
    row_vectors: usize,
}

/// What the biased kernels take as their output: the store, and the layouts cubek's own
/// output argument carries (matrix coordinates to a position, and batch to offset).
#[derive(CubeType, CubeLaunch, Clone)]
pub struct BiasedOutput<O: Numeric> {
    store: BiasedStore<O>,
    layout: GlobalLayout,
    batch: VirtualLayout<Coords1d, Coords1d>,
}

/// `out[pos] = O(acc + f32(bias[columns of pos]))`: one rounding, after the bias.
#[cube]
fn write_biased<T: CubePrimitive, O: Numeric>(store: &mut BiasedStore<O>, pos: usize, value: T) {
    let bias = Vector::<f32, AccSize>::cast_from(store.bias[pos % store.row_vectors]);
    let sum = Vector::<f32, AccSize>::cast_from(value) + bias;
    store.out[pos] = Vector::cast_from(sum);
}

/// What the output holds at `pos`, or `fallback` past its end.
#[cube]
fn read_stored<T: CubePrimitive, O: Numeric>(store: &BiasedStore<O>, pos: usize, fallback: T) -> T {
    let mut value = fallback;
    if pos < store.out.buffer_len() {
        value = T::cast_from(store.out[pos]);
    }
    value
}

#[cube]
fn is_stored<O: Numeric>(store: &BiasedStore<O>, pos: usize) -> bool {
    pos < store.out.buffer_len()
}

#[cube]
fn stored_len<O: Numeric>(store: &BiasedStore<O>) -> usize {
    store.out.buffer_len()
}

impl<O: Numeric> Vectorized for BiasedStore<O> {}
impl<O: Numeric> VectorizedExpand for BiasedStoreExpand<O> {
    fn vector_size(&self) -> VectorSize {
        self.out.vector_size()
    }
}

// cubek's tiled matmuls only write their output view (the plane and unit writers); reads
// are answered from the stored values so the view is an honest one. Slices and tensor-map
// copies would bypass the bias, so they are refused when a kernel is being built.
impl<T: CubePrimitive, O: Numeric> ViewOperations<T, Coords1d> for BiasedStore<O> {}
impl<T: CubePrimitive, O: Numeric> ViewOperationsExpand<T, Coords1d> for BiasedStoreExpand<O> {
    fn __expand_read_method(&self, scope: &mut Scope, pos: NativeExpand<usize>) -> T::ExpandType {
        let zero = T::__expand_cast_from(scope, 0.into());
        read_stored::expand::<T, O>(scope, self.clone(), pos, zero)
    }

    fn __expand_read_checked_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
    ) -> T::ExpandType {
        let zero = T::__expand_cast_from(scope, 0.into());
        read_stored::expand::<T, O>(scope, self.clone(), pos, zero)
    }

    fn __expand_read_masked_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
        value: T::ExpandType,
    ) -> T::ExpandType {
        read_stored::expand::<T, O>(scope, self.clone(), pos, value)
    }

    fn __expand_read_unchecked_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
    ) -> T::ExpandType {
        let zero = T::__expand_cast_from(scope, 0.into());
        read_stored::expand::<T, O>(scope, self.clone(), pos, zero)
    }

    fn __expand_to_linear_slice_method(
        &self,
        _scope: &mut Scope,
        _pos: NativeExpand<usize>,
        _end: NativeExpand<usize>,
    ) -> SliceExpand<T, ReadOnly> {
        panic!("the biased matmul output holds the output dtype, not the accumulator's: no slice of it can be read as one")
    }

    fn __expand_tensor_map_load_method(
        &self,
        _scope: &mut Scope,
        _barrier: BarrierExpand,
        _shared_memory: SliceExpand<T, ReadWrite>,
        _pos: NativeExpand<usize>,
    ) {
        panic!("the biased matmul output is not a tensor map")
    }

    fn __expand_shape_method(&self, scope: &mut Scope) -> NativeExpand<usize> {
        stored_len::expand::<O>(scope, self.clone())
    }

    fn __expand_is_in_bounds_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
    ) -> NativeExpand<bool> {
        is_stored::expand::<O>(scope, self.clone(), pos)
    }
}

impl<T: CubePrimitive, O: Numeric> ViewOperationsMut<T, Coords1d> for BiasedStore<O> {}
impl<T: CubePrimitive, O: Numeric> ViewOperationsMutExpand<T, Coords1d> for BiasedStoreExpand<O> {
    fn __expand_write_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
        value: T::ExpandType,
    ) {
        write_biased::expand::<T, O>(scope, self.clone(), pos, value);
    }

    fn __expand_write_checked_method(
        &self,
        scope: &mut Scope,
        pos: NativeExpand<usize>,
        value: T::ExpandType,
    ) {
        let in_bounds = is_stored::expand::<O>(scope, self.clone(), pos.clone());
        if_expand(scope, in_bounds, |scope| {
            write_biased::expand::<T, O>(scope, self.clone(), pos, value);
        });
    }

    fn __expand_to_linear_slice_mut_method(
        &self,
        _scope: &mut Scope,
        _pos: NativeExpand<usize>,
        _end: NativeExpand<usize>,
    ) -> SliceExpand<T, ReadWrite> {
        panic!("the biased matmul output adds the bias on write: writing through a slice would skip it")
    }

    fn __expand_tensor_map_store_method(
        &self,
        _scope: &mut Scope,
        _shared_memory: SliceExpand<T, ReadOnly>,
        _pos: NativeExpand<usize>,
    ) {
        panic!("the biased matmul output is not a tensor map")
    }
}

#[cube]
fn biased_view<EO: CubePrimitive, O: Numeric>(
    output: &BiasedOutput<O>,
) -> View<EO, BatchedCoords, ReadWrite> {
    let mut store = output.store.clone();
    View::new_mut::<BiasedStore<O>, Coords1d>(&mut store, output.layout.clone())
}

/// Operands staged by TMA (cubek's own tensor-map inputs), biased output of dtype `O`.
pub struct TmaBiasArgs<O> {
    _out: PhantomData<fn() -> O>,
}

impl<O> Clone for TmaBiasArgs<O> {
    fn clone(&self) -> Self {
        Self { _out: PhantomData }
    }
}

#[cube]
impl<O: Numeric> MatmulArgs for TmaBiasArgs<O> {
    type Input<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> =
        TensorMapInputs<Lhs, Rhs, EO>;
    type Output<EO: CubePrimitive> = BiasedOutput<O>;
    type Config = ();
    type State<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> =
        (TensorMapInputs<Lhs, Rhs, EO>, BiasedOutput<O>);

    fn init_state<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        input: &Self::Input<Lhs, Rhs, EO>,
        output: &mut Self::Output<EO>,
        _config: (),
        #[comptime] _lhs_layout_config: GlobalLayoutConfig,
        #[comptime] _rhs_layout_config: GlobalLayoutConfig,
        #[comptime] _out_layout_config: GlobalLayoutConfig,
    ) -> Self::State<Lhs, Rhs, EO> {
        (*input, output.clone())
    }

    fn view_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
    ) -> View<Lhs, BatchedCoords> {
        state.0.lhs
    }

    fn batch_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        batch
    }

    fn view_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
    ) -> View<Rhs, BatchedCoords> {
        state.0.rhs
    }

    fn batch_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        batch
    }

    fn view_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
    ) -> ComptimeOption<View<EO, BatchedCoords>> {
        ComptimeOption::new_None()
    }

    fn batch_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        batch
    }

    fn view_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &mut Self::State<Lhs, Rhs, EO>,
    ) -> View<EO, BatchedCoords, ReadWrite> {
        biased_view::<EO, O>(&state.1)
    }

    fn batch_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        state.1.batch.to_source_pos(batch)
    }

    fn runtime_config<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
    ) {
    }
}

/// Operands read by plain loads, through their strides and batch layouts (what cubek's
/// `TensorInputs` holds, whose fields are private).
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct PlainInputs<Lhs: CubePrimitive, Rhs: CubePrimitive> {
    lhs_batch: VirtualLayout<Coords1d, Coords1d>,
    lhs: View<Lhs, BatchedCoords>,
    rhs_batch: VirtualLayout<Coords1d, Coords1d>,
    rhs: View<Rhs, BatchedCoords>,
}

/// Operands read by plain loads ([`PlainInputs`]), biased output of dtype `O`.
pub struct PlainBiasArgs<O> {
    _out: PhantomData<fn() -> O>,
}

impl<O> Clone for PlainBiasArgs<O> {
    fn clone(&self) -> Self {
        Self { _out: PhantomData }
    }
}

#[cube]
impl<O: Numeric> MatmulArgs for PlainBiasArgs<O> {
    type Input<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> = PlainInputs<Lhs, Rhs>;
    type Output<EO: CubePrimitive> = BiasedOutput<O>;
    type Config = ();
    type State<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive> =
        (PlainInputs<Lhs, Rhs>, BiasedOutput<O>);

    fn init_state<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        input: &Self::Input<Lhs, Rhs, EO>,
        output: &mut Self::Output<EO>,
        _config: (),
        #[comptime] _lhs_layout_config: GlobalLayoutConfig,
        #[comptime] _rhs_layout_config: GlobalLayoutConfig,
        #[comptime] _out_layout_config: GlobalLayoutConfig,
    ) -> Self::State<Lhs, Rhs, EO> {
        (*input, output.clone())
    }

    fn view_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
    ) -> View<Lhs, BatchedCoords> {
        state.0.lhs
    }

    fn batch_lhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        state.0.lhs_batch.to_source_pos(batch)
    }

    fn view_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
    ) -> View<Rhs, BatchedCoords> {
        state.0.rhs
    }

    fn batch_rhs<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        state.0.rhs_batch.to_source_pos(batch)
    }

    fn view_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
    ) -> ComptimeOption<View<EO, BatchedCoords>> {
        ComptimeOption::new_None()
    }

    fn batch_acc<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        batch
    }

    fn view_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &mut Self::State<Lhs, Rhs, EO>,
    ) -> View<EO, BatchedCoords, ReadWrite> {
        biased_view::<EO, O>(&state.1)
    }

    fn batch_out<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        state: &Self::State<Lhs, Rhs, EO>,
        batch: usize,
    ) -> usize {
        state.1.batch.to_source_pos(batch)
    }

    fn runtime_config<Lhs: CubePrimitive, Rhs: CubePrimitive, EO: CubePrimitive>(
        _state: &Self::State<Lhs, Rhs, EO>,
    ) {
    }
}

/// The launch argument of [`PlainInputs`] for `lhs` and `rhs`, as cubek builds its own
/// plain inputs: a strided view per operand and its batch layout.
pub fn plain_inputs<L: CubePrimitive, Rh: CubePrimitive, R: Runtime>(
    lhs: TensorBinding<R>,
    rhs: TensorBinding<R>,
    blueprint: &TilingBlueprint,
    problem: &MatmulProblem,
    vector_sizes: &MatmulVectorSizes,
) -> PlainInputsLaunch<L, Rh, R> {
    let batch = |t: &TensorBinding<R>| {
        VirtualLayoutLaunch::new::<BatchLayout>(BatchLayoutLaunch::from_handle(t, problem))
    };
    let view = |t: TensorBinding<R>, vector_size, config| {
        let layout = GlobalLayoutLaunch::from_handle(&t, vector_size, config);
        ViewArg::new_tensor::<GlobalLayout>(t.into_tensor_arg(), layout)
    };
    PlainInputsLaunch::new(
        batch(&lhs),
        view(lhs, vector_sizes.lhs, blueprint.lhs_global_layout_config()),
        batch(&rhs),
        view(rhs, vector_sizes.rhs, blueprint.rhs_global_layout_config()),
    )
}

/// The launch argument of [`BiasedOutput`]: `out` contiguous `[.., N]`, `bias` contiguous
/// `[N]`, both of the output dtype.
pub fn biased_output<O: Numeric, R: Runtime>(
    out: TensorBinding<R>,
    bias: TensorBinding<R>,
    blueprint: &TilingBlueprint,
    problem: &MatmulProblem,
    vector_sizes: &MatmulVectorSizes,
) -> BiasedOutputLaunch<O, R> {
    let n = out.shape[out.shape.len() - 1];
    let layout = GlobalLayoutLaunch::from_handle(
        &out,
        vector_sizes.out,
        blueprint.out_global_layout_config(),
    );
    let batch =
        VirtualLayoutLaunch::new::<BatchLayout>(BatchLayoutLaunch::from_handle(&out, problem));
    BiasedOutputLaunch::new(
        BiasedStoreLaunch::new(
            out.into_tensor_arg(),
            bias.into_tensor_arg(),
            n / vector_sizes.out,
        ),
        layout,
        batch,
    )
}
