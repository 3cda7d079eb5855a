//! Vector-Jacobian product of [`stack`](super::stack()): input `p` receives `g[p]`, its slice of
//! the gradient (copied row-major, in the input view's logical shape).

use luminal::prelude::{symbolic::Expression, *};

use crate::autodiff::emit::{copy, dims, plain, Tensor};

/// Gradients of the views of a [`Stack`](super::Stack) node's inputs from its gradient buffer
/// `g_id`.
pub(crate) fn vjp(inputs: &[Tensor], g_id: NodeIndex, wanted: &[bool]) -> Vec<Option<Tensor>> {
    let Some(first) = inputs.first() else {
        return vec![];
    };
    let part = dims(first);
    let len = part.iter().fold(Expression::from(1), |acc, d| acc * *d);
    let g = plain(g_id, &[inputs.len().into(), len], first.graph_ref);
    wanted
        .iter()
        .enumerate()
        .map(|(p, &w)| {
            w.then(|| {
                let mut st = g.shape;
                st.slice(&[(p.into(), (p + 1).into()), (0.into(), i32::MAX.into())]);
                let c = copy(GraphTensor::from_id(g.id, st, g.graph_ref));
                plain(c.id, &part, g.graph_ref)
            })
        })
        .collect()
}
