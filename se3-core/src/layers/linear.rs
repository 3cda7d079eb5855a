//! `Linear<In, Out>`: equivariant channel mixing within each degree.

use std::marker::PhantomData;

use rand::Rng;

use super::Layer;
use crate::fiber::{DegreeTensor, Features, FeedsInto, Fiber, SameDegrees};
use crate::Error;

/// Per-degree channel mixing from fiber `In` to fiber `Out`, which have the same degrees
/// and parities ([`SameDegrees`], so also the same group):
///
/// y_l[n, o, m] = sum_i x_l[n, i, m] W_l[i, o] + [l = 0] b[o]
///
/// No mixing across degrees or m components, so it commutes with every D_l(R); the bias is
/// on degree 0 only. Weights of degree l are `[c_in, c_out]` row-major.
#[derive(Debug, Clone)]
pub struct Linear<In, Out> {
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
    fibers: PhantomData<fn(In) -> Out>,
}

impl<In: Fiber, Out: Fiber> Linear<In, Out> {
    /// A layer with weights drawn uniformly with variance 1 / c_in per degree (so unit-
    /// variance inputs give unit-variance outputs) and zero bias.
    #[rustfmt::skip]
    pub fn new(rng: &mut impl Rng) -> Self where Self: SameDegrees {
        let weights = In::DEGREES
            .into_iter()
            .zip(Out::DEGREES)
            .map(|(i, o)| {
                let bound = (3.0 / i.channels as f32).sqrt();
                (0..i.channels * o.channels)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect()
            })
            .collect();
        Linear {
            weights,
            bias: vec![0.0; Out::channels(0).unwrap_or(0)],
            fibers: PhantomData,
        }
    }

    /// A layer with the given weights, one `[c_in, c_out]` row-major matrix per degree in
    /// degree order, and `bias` (one value per degree-0 output channel; empty if `Out` has
    /// no degree 0).
    ///
    /// # Errors
    /// `LengthMismatch` if the number of matrices or the bias length is wrong,
    /// `ShapeMismatch` if a matrix has the wrong size, `NonFinite` for NaN or inf.
    #[rustfmt::skip]
    pub fn from_weights(weights: Vec<Vec<f32>>, bias: Vec<f32>) -> Result<Self, Error> where Self: SameDegrees {
        if weights.len() != In::DEGREES.len() {
            return Err(Error::LengthMismatch {
                what: "linear weights (one matrix per degree)",
                expected: In::DEGREES.len(),
                found: weights.len(),
            });
        }
        for ((w, i), o) in weights.iter().zip(In::DEGREES).zip(Out::DEGREES) {
            if w.len() != i.channels * o.channels {
                return Err(Error::ShapeMismatch {
                    what: format!("linear weight of degree {}", i.l),
                    expected: vec![i.channels, o.channels],
                    found: vec![w.len()],
                });
            }
        }
        let bias_len = Out::channels(0).unwrap_or(0);
        if bias.len() != bias_len {
            return Err(Error::LengthMismatch {
                what: "linear bias (one value per degree-0 output channel)",
                expected: bias_len,
                found: bias.len(),
            });
        }
        let all = weights.iter().flatten().chain(&bias);
        if let Some((index, v)) = all.enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "linear parameters",
                index,
                value: f64::from(*v),
            });
        }
        Ok(Linear {
            weights,
            bias,
            fibers: PhantomData,
        })
    }

    /// The `[c_in, c_out]` weight of the degree at position `index`.
    pub fn weight(&self, index: usize) -> Option<&[f32]> {
        self.weights.get(index).map(Vec::as_slice)
    }

    /// The degree-0 bias (empty if `Out` has no degree 0).
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The layer applied to `x`; compiles only if `x` has the input fiber `In`.
    pub fn forward<X: FeedsInto<In>>(&self, x: &X) -> Features<Out> {
        let x = X::feed(x);
        let nodes = x.nodes();
        let blocks = x
            .blocks()
            .iter()
            .zip(Out::DEGREES)
            .zip(&self.weights)
            .map(|((b, o), w)| {
                let [_, ci, width] = b.shape();
                let co = o.channels;
                let mut y = vec![0.0f32; nodes * co * width];
                let xd = b.data();
                for n in 0..nodes {
                    for i in 0..ci {
                        let xrow = &xd[(n * ci + i) * width..(n * ci + i + 1) * width];
                        for (oc, wv) in w[i * co..(i + 1) * co].iter().enumerate() {
                            let yrow = &mut y[(n * co + oc) * width..(n * co + oc + 1) * width];
                            for (yv, xv) in yrow.iter_mut().zip(xrow) {
                                *yv += wv * xv;
                            }
                        }
                    }
                    if o.l == 0 {
                        for (oc, bv) in self.bias.iter().enumerate() {
                            y[n * co + oc] += bv;
                        }
                    }
                }
                DegreeTensor::from_vec([nodes, co, width], y)
            })
            .collect::<Result<Vec<_>, _>>();
        match blocks {
            Ok(blocks) => Features::from_blocks_unchecked(nodes, blocks),
            // Shapes are computed from the fibers above; a mismatch is a broken invariant.
            Err(e) => unreachable!("linear output block shape: {e}"),
        }
    }
}

impl<In: Fiber, Out: Fiber> Layer for Linear<In, Out> {
    type In = In;
    type Out = Out;

    fn forward(&self, x: &Features<In>) -> Features<Out> {
        Linear::forward(self, x)
    }
}
