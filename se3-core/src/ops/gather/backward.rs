//! Vector-Jacobian product of [`gather`](super::gather): `d table = scatter_add(g, idx)` into
//! the table's rows (rows read twice receive both gradients; `-1` rows read nothing and give
//! nothing); indices have no gradient.

use luminal::prelude::*;

use crate::autodiff::emit::{dims, plain, Tensor};
use crate::ops::scatter_add::ScatterAdd;
use crate::ops::size_view;

/// Gradients of the views `[table, idx]` of a [`GatherRows`](super::GatherRows) node from its gradient buffer
/// `g_id`.
pub(crate) fn vjp(inputs: &[Tensor], g_id: NodeIndex, wanted: &[bool]) -> Vec<Option<Tensor>> {
    let (table, idx) = (inputs[0], inputs[1]);
    let table_dims = dims(&table);
    let mut out = table_dims.clone();
    out[0] = dims(&idx)[0];
    let g = plain(g_id, &out, table.graph_ref);
    let d_table = wanted[0].then(|| {
        let id = table
            .graph()
            .add_op(ScatterAdd)
            .input(g.id, 0, g.shape)
            .input(idx.id, 0, idx.shape)
            .input(idx.id, 0, size_view(&table_dims[..1]))
            .finish();
        plain(id, &table_dims, table.graph_ref)
    });
    vec![d_table, None]
}
