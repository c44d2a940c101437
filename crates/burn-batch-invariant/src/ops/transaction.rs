//! `TransactionOps`: forwarded to `B`.

use burn_backend::ops::{TransactionOps, TransactionPrimitive, TransactionPrimitiveData};
use burn_backend::ExecutionError;

use core::future::Future;

use crate::{BatchInvariant, KernelHost};

impl<B: KernelHost> TransactionOps<Self> for BatchInvariant<B> {
    fn tr_execute(
        transaction: TransactionPrimitive<Self>,
    ) -> impl Future<Output = Result<TransactionPrimitiveData, ExecutionError>> + Send {
        // `execute_async` has already taken the read order out of the transaction, so
        // rebuilding it with `new` loses nothing.
        B::tr_execute(TransactionPrimitive::<B>::new(
            transaction.read_floats,
            transaction.read_qfloats,
            transaction.read_ints,
            transaction.read_bools,
        ))
    }
}
