//! [`stack()`]: `P` tensors of one logical shape `S` as one `[P, S]` tensor (row-major copies
//! of each input's view, one after the other), e.g. the weights of many radial networks as the
//! stacked operand of [`radial_hidden`](super::radial_hidden()) while each network's weights stay
//! a tensor of their own (their checkpoint key, their gradient). Its vector-Jacobian product
//! hands each input its slice `g[p]` of the gradient (`backward.rs`).

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::Stack;
use luminal::prelude::*;

use super::logical_dims;

/// `[P, S]` from `P` tensors of logical shape `S` (`None` for no tensor).
pub fn stack<S: Shape, D: Shape>(parts: &[GraphTensor<S>]) -> Option<GraphTensor<D>> {
    let first = parts.first()?;
    let mut dims = vec![parts.len().into()];
    dims.extend(logical_dims(&first.shape));
    let mut op = first.graph().add_op(Stack);
    for p in parts {
        op = op.input(p.id, 0, p.shape);
    }
    Some(GraphTensor::from_id(
        op.finish(),
        ShapeTracker::new(&dims),
        first.graph_ref,
    ))
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rng};
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::X;
    use crate::Error;

    /// Stacked transposed matrices equal the transposes laid one after the other.
    #[test]
    fn stack_copies_each_view_in_order() -> Result<(), Error> {
        let mut r = rng();
        let (p, a, b) = (r.gen_range(1..5), r.gen_range(1..6), r.gen_range(1..6));
        let mut s = Session::new();
        let mut parts = vec![];
        let mut data = vec![];
        for i in 0..p {
            let d = rand_vec(&mut r, a * b);
            let t = s.input_with_shape::<(X, X)>(
                &format!("t{i}"),
                InputKind::Values,
                &[a.into(), b.into()],
            );
            s.set(&format!("t{i}"), d.clone(), &[a, b])?;
            parts.push(t.permute::<(X, X), _>());
            data.push(d);
        }
        let y: GraphTensor<(X, X, X)> =
            super::stack(&parts).ok_or(Error::Empty { what: "parts" })?;
        s.output("y", y);
        s.run()?;
        let got = s.get("y")?;
        assert_eq!(got.shape, vec![p, b, a]);
        for (i, d) in data.iter().enumerate() {
            for u in 0..b {
                for v in 0..a {
                    assert_eq!(got.data[(i * b + u) * a + v], d[v * b + u]);
                }
            }
        }
        Ok(())
    }
}
