//! Gradient scaling: `y = x` in the forward pass, `dx = frac · dy` in the backward pass.
//!
//! equiformer-pytorch computes `frac · x + (1 − frac) · stop_gradient(x)` on its embedded
//! type-0 input features (`embedding_grad_frac`, default 0.5, "a trick for more stable
//! training"): the value is `x`, but only the fraction `frac` of the gradient flows back into
//! the embedding and the input features. This op reproduces that: its output is a row-major
//! copy of its input's view, and its vector-Jacobian product multiplies by `frac`
//! (`frac = 1` is the identity, `frac = 0` stops the gradient).

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::GradScale;
use luminal::prelude::*;

use super::logical_dims;

/// `x` forward, `frac ×` the gradient backward (a row-major copy of `x`'s view).
pub fn grad_scale<S: Shape>(x: GraphTensor<S>, frac: f32) -> GraphTensor<S> {
    let dims = logical_dims(&x.shape);
    let id = x
        .graph()
        .add_op(GradScale { frac })
        .input(x.id, 0, x.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::autodiff;
    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::X;
    use crate::Error;

    /// Forward: the values of a permuted view, unchanged. Backward: `frac` times the gradient
    /// of the same graph without the op (`L = <sin(x)ᵀ, c>`), through the view's adjoint.
    #[test]
    fn grad_scale_is_the_identity_forward_and_scales_the_gradient() -> Result<(), Error> {
        let mut r = rng();
        let (rows, w) = (r.gen_range(1..20), r.gen_range(1..9));
        let frac: f32 = r.gen_range(0.0..1.0);
        let build = |s: &mut Session, scaled: bool| -> Result<(), Error> {
            let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &[rows.into(), w.into()]);
            let c = s.input_with_shape::<(X, X)>("c", InputKind::Values, &[w.into(), rows.into()]);
            let xt: GraphTensor<(X, X)> = x.permute::<_, Axes2<1, 0>>();
            let y = if scaled {
                super::grad_scale(xt, frac)
            } else {
                xt
            };
            s.output("y", y);
            let loss = (y.sin() * c).sum_reduce::<(), Axes2<0, 1>>();
            let g = autodiff::grad(loss.no_shape(), &[x.no_shape()])?;
            s.output("dx", g[0]);
            Ok(())
        };
        let xs: Vec<f32> = (0..rows * w).map(|_| r.gen_range(-2.0..2.0)).collect();
        let cs: Vec<f32> = (0..rows * w).map(|_| r.gen_range(-2.0..2.0)).collect();
        let mut got = vec![];
        for scaled in [true, false] {
            let mut s = Session::new();
            build(&mut s, scaled)?;
            s.compile();
            s.set("x", xs.clone(), &[rows, w])?;
            s.set("c", cs.clone(), &[w, rows])?;
            s.run()?;
            got.push((s.get("y")?.data, s.get("dx")?.data));
        }
        let ((y, dx), (y0, dx0)) = (&got[0], &got[1]);
        for i in 0..rows {
            for j in 0..w {
                assert_eq!(y[j * rows + i], xs[i * w + j], "forward at ({i}, {j})");
            }
        }
        assert_eq!(y, y0);
        for (a, b) in dx.iter().zip(dx0) {
            assert!(
                (a - frac * b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{a} vs {frac} × {b}"
            );
        }
        assert!(
            dx0.iter().any(|v| v.abs() > 1e-3),
            "the unscaled gradient is zero"
        );
        Ok(())
    }
}
