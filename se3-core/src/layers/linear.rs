//! `Linear<In, Out>`: equivariant channel mixing within each degree.

use std::marker::PhantomData;

use rand::Rng;

use luminal::prelude::*;

use super::graph::{
    bmm_shared, expand_at, permute, retype, FeatureTensors, GraphFeatures, Param, ParamSource, X,
};
use super::Layer;
use crate::exec::Session;
use crate::fiber::{DegreeSpec, DegreeTensor, Features, FeedsInto, Fiber, FiberSpec, SameDegrees};
use crate::Error;

/// Where a linear layer's weights come from, and how they are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearLayout {
    /// se3-transformer-pytorch `LinearSE3`: keys `<prefix>weights.<l>` of shape
    /// `(c_in, c_out)`, used as is; no bias.
    Se3TransformerPytorch,
    /// e3nn `o3.Linear` between fibers of one entry per degree: key `<prefix>weight`, the flat
    /// concatenation of the `(c_in, c_out)` blocks in degree order, scaled by
    /// `1 / sqrt(c_in)` (path normalisation "element"); key `<prefix>bias` (degree-0 outputs)
    /// if the layer has a bias.
    E3nn,
}

/// Run-time per-degree channel mixing, the graph form of [`Linear`]:
///
/// `y_l[r, o, m] = sum_i x_l[r, i, m] W_l[i, o] + [l = 0] b[o]`
///
/// for every degree `l` of both `fiber_in` and `fiber_out` (se3-transformer-pytorch's
/// `LinearSE3` keeps only those; the output fiber is `fiber_out` restricted to them).
/// Equivariant: it never mixes degrees or m components.
///
/// E(3) fibers (parities): only entries with the same degree **and** parity are connected
/// (e3nn's `o3.Linear` rule: a map `1e -> 1o` would not commute with inversion); an entry
/// whose parity differs from the other fiber's at that degree gets no term (it is dropped
/// from the output fiber). The bias goes on even (or parity-less) scalars only, as e3nn's:
/// a constant on `0o` would not flip sign under inversion.
#[derive(Debug, Clone)]
pub struct LinearLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    /// `(l, [c_in, c_out] weight)` per common degree.
    weights: Vec<(usize, Param)>,
    bias: Option<Param>,
}

/// The entries both fibers have: same degree and same parity (`None` for SE(3) fibers).
fn common(fin: &FiberSpec, fout: &FiberSpec) -> Vec<(DegreeSpec, DegreeSpec)> {
    fin.degrees()
        .iter()
        .filter_map(|i| {
            fout.degrees()
                .iter()
                .find(|o| o.l == i.l && o.parity == i.parity)
                .map(|o| (*i, *o))
        })
        .collect()
}

/// The output entry that may carry a bias: degree 0, even or without parity.
fn bias_entry(pairs: &[(DegreeSpec, DegreeSpec)]) -> Option<DegreeSpec> {
    pairs
        .iter()
        .find(|(i, _)| i.l == 0 && i.parity != Some(crate::so3::Parity::Odd))
        .map(|(_, o)| *o)
}

impl LinearLayer {
    /// A layer with uniform weights of variance `1 / c_in` and zero bias (if `bias`).
    ///
    /// # Errors
    /// `Empty` if the fibers share no degree.
    pub fn new(
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let pairs = common(fiber_in, fiber_out);
        let weights = pairs
            .iter()
            .map(|(i, o)| {
                let bound = (3.0 / i.channels as f32).sqrt();
                (
                    i.l,
                    Param::uniform(
                        format!("weights.{}", i.l),
                        vec![i.channels, o.channels],
                        bound,
                        rng,
                    ),
                )
            })
            .collect();
        let bias = match bias_entry(&pairs) {
            Some(o) if bias => Some(Param::new(
                "bias".into(),
                vec![o.channels],
                vec![0.0; o.channels],
            )?),
            _ => None,
        };
        Self::assemble(fiber_in, fiber_out, weights, bias)
    }

    fn assemble(
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        weights: Vec<(usize, Param)>,
        bias: Option<Param>,
    ) -> Result<Self, Error> {
        let pairs = common(fiber_in, fiber_out);
        let out = FiberSpec::new(pairs.iter().map(|p| p.1).collect())?;
        Ok(LinearLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: out,
            weights,
            bias,
        })
    }

    /// A layer from given values: `weights` holds one row-major `[c_in, c_out]` matrix per
    /// degree both fibers have, in degree order; `bias` (degree-0 outputs) only if both fibers
    /// have degree 0. For models whose weights are already in memory (e.g. one head's share of
    /// a layer).
    ///
    /// # Errors
    /// `LengthMismatch` for a wrong number of matrices, `WrongShape` or `NonFiniteWeight` for a
    /// bad matrix or bias, `Empty` if the fibers share no degree.
    pub fn from_values(
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        weights: Vec<Vec<f32>>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, Error> {
        let pairs = common(fiber_in, fiber_out);
        if weights.len() != pairs.len() {
            return Err(Error::LengthMismatch {
                what: "linear weights (one per common degree)",
                expected: pairs.len(),
                found: weights.len(),
            });
        }
        let weights = pairs
            .iter()
            .zip(weights)
            .map(|((i, o), data)| {
                Ok((
                    i.l,
                    Param::new(
                        format!("weights.{}", i.l),
                        vec![i.channels, o.channels],
                        data,
                    )?,
                ))
            })
            .collect::<Result<_, Error>>()?;
        let bias = match (bias, bias_entry(&pairs)) {
            (Some(b), Some(o)) => Some(Param::new("bias".into(), vec![o.channels], b)?),
            _ => None,
        };
        Self::assemble(fiber_in, fiber_out, weights, bias)
    }

    /// Loads the weights stored under `prefix` (e.g. `"convs.0.self_interact."`) in `layout`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`; `Empty` if the fibers share no
    /// degree.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        layout: LinearLayout,
        bias: bool,
    ) -> Result<Self, Error> {
        let pairs = common(fiber_in, fiber_out);
        let mut weights = Vec::new();
        match layout {
            LinearLayout::Se3TransformerPytorch => {
                for (i, o) in &pairs {
                    let p = Param::load(
                        src,
                        format!("{prefix}weights.{}", i.l),
                        vec![i.channels, o.channels],
                    )?;
                    weights.push((
                        i.l,
                        Param {
                            key: format!("weights.{}", i.l),
                            ..p
                        },
                    ));
                }
            }
            LinearLayout::E3nn => {
                let total: usize = pairs.iter().map(|(i, o)| i.channels * o.channels).sum();
                let flat = Param::load(src, format!("{prefix}weight"), vec![total])?;
                let mut at = 0;
                for (i, o) in &pairs {
                    let n = i.channels * o.channels;
                    let scale = 1.0 / (i.channels as f32).sqrt();
                    let data = flat.data[at..at + n].iter().map(|v| v * scale).collect();
                    at += n;
                    weights.push((
                        i.l,
                        Param::new(
                            format!("weights.{}", i.l),
                            vec![i.channels, o.channels],
                            data,
                        )?,
                    ));
                }
            }
        }
        let bias = match bias_entry(&pairs) {
            Some(o) if bias => {
                let p = Param::load(src, format!("{prefix}bias"), vec![o.channels])?;
                Some(Param {
                    key: "bias".into(),
                    ..p
                })
            }
            _ => None,
        };
        Self::assemble(fiber_in, fiber_out, weights, bias)
    }

    /// The input fiber.
    pub fn fiber_in(&self) -> &FiberSpec {
        &self.fiber_in
    }

    /// The output fiber (the degrees of both fibers, with the output channels).
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.fiber_out
    }

    /// Adds the layer to `s`: weights become session weights `<prefix>weights.<l>` (and
    /// `<prefix>bias`), set to this layer's values.
    ///
    /// # Errors
    /// `FiberMismatch` if `x` lacks a degree of the layer or has other channel counts.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        let mut out = Vec::new();
        for (l, w) in &self.weights {
            let parity = |f: &FiberSpec| f.degrees().iter().find(|d| d.l == *l).map(|d| d.parity);
            let t = match x.degree(*l) {
                Some(t)
                    if x.spec().channels(*l) == Some(w.shape[0])
                        && parity(x.spec()) == parity(&self.fiber_in) =>
                {
                    t
                }
                _ => {
                    return Err(Error::FiberMismatch {
                        fiber: "linear layer input",
                        expected: self.fiber_in.to_string(),
                        found: x.spec().to_string(),
                    })
                }
            };
            let rows = super::graph::dims(t)[0];
            let wt: GraphTensor<(X, X)> = w.declare(s, prefix)?;
            // [r, m, ci] x [ci, co] as one GEMM over r m rows -> [r, m, co] -> view [r, co, m]
            let xt: GraphTensor<(X, X, X)> = retype(permute(t, &[0, 2, 1]));
            let mut y: GraphTensor<(X, X, X)> = permute(bmm_shared(xt, wt), &[0, 2, 1]);
            if *l == 0 {
                if let Some(b) = &self.bias {
                    let bt: GraphTensor<(X,)> = b.declare(s, prefix)?;
                    let b3: GraphTensor<(X, X)> = expand_at(bt, 0, rows);
                    let b3: GraphTensor<(X, X, X)> = expand_at(b3, 2, 1);
                    y += b3;
                }
            }
            out.push(retype(y));
        }
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), out))
    }
}

/// Per-degree channel mixing from fiber `In` to fiber `Out`, which have the same degrees
/// and parities ([`SameDegrees`], so also the same group):
///
/// `y_l[n, o, m] = sum_i x_l[n, i, m] W_l[i, o] + [l = 0] b[o]`
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

impl<In: Fiber, Out: Fiber> Linear<In, Out> {
    /// The run-time form of this layer (same weights, `<prefix>weights.<l>` and `bias`).
    pub fn to_layer(&self) -> LinearLayer {
        let weights = In::DEGREES
            .into_iter()
            .zip(Out::DEGREES)
            .zip(&self.weights)
            .map(|((i, o), w)| {
                (
                    i.l,
                    Param {
                        key: format!("weights.{}", i.l),
                        shape: vec![i.channels, o.channels],
                        data: w.clone(),
                    },
                )
            })
            .collect();
        let bias = (!self.bias.is_empty()).then(|| Param {
            key: "bias".into(),
            shape: vec![self.bias.len()],
            data: self.bias.clone(),
        });
        LinearLayer {
            fiber_in: In::spec(),
            fiber_out: Out::spec(),
            weights,
            bias,
        }
    }

    /// Adds the layer to a graph (see [`LinearLayer::build`]); weights are named
    /// `<prefix>weights.<l>` and `<prefix>bias`.
    ///
    /// # Errors
    /// Those of [`Session::set_weight`] (none for a well-formed layer).
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &GraphFeatures<In, R>,
    ) -> Result<GraphFeatures<Out, R>, Error> {
        Ok(GraphFeatures::wrap(self.to_layer().build(
            s,
            prefix,
            x.untyped(),
        )?))
    }
}

impl<In: Fiber, Out: Fiber> Layer for Linear<In, Out> {
    type In = In;
    type Out = Out;

    fn forward(&self, x: &Features<In>) -> Features<Out> {
        Linear::forward(self, x)
    }
}

impl LinearLayer {
    /// Visits every parameter as `(<prefix><key>, param)` (`weights.<l>`, then `bias`).
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (_, p) in &self.weights {
            f(&format!("{prefix}{}", p.key), p);
        }
        if let Some(b) = &self.bias {
            f(&format!("{prefix}{}", b.key), b);
        }
    }

    /// Visits every parameter mutably, as [`LinearLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (_, p) in &mut self.weights {
            f(&format!("{prefix}{}", p.key), p)?;
        }
        if let Some(b) = &mut self.bias {
            f(&format!("{prefix}{}", b.key), b)?;
        }
        Ok(())
    }
}

impl<In: Fiber, Out: Fiber> Linear<In, Out> {
    /// The weights (`[c_in, c_out]` per degree) and the degree-0 bias, for the module
    /// parameter visitors.
    pub(crate) fn values_mut(&mut self) -> (&mut [Vec<f32>], &mut Vec<f32>) {
        (&mut self.weights, &mut self.bias)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::fiber::Degree;
    use crate::layers::{Activation, Relu};
    use crate::testing::seed;
    use se3_macros::fiber;

    #[fiber(0:3, 1:2, 2:2)]
    struct In3;
    #[fiber(0:2, 1:4, 2:1)]
    struct Out3;
    #[fiber(1:2)]
    struct VectorsOnly;
    #[fiber(1:3)]
    struct VectorsOut;

    fn random<F: Fiber>(nodes: usize, rng: &mut StdRng) -> Features<F> {
        Features::from_fn(nodes, |_, _, _, _| rng.gen_range(-1.0..1.0))
    }

    fn close(a: &Features<impl Fiber>, b: &[Vec<f32>], s: u64) {
        for (x, y) in a.blocks().iter().zip(b) {
            for (u, v) in x.data().iter().zip(y) {
                assert!(
                    (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                    "seed {s}: {u} vs {v}"
                );
            }
        }
    }

    #[test]
    fn linear_follows_its_formula() {
        let s = seed();
        let mut rng = StdRng::seed_from_u64(s);
        let mut layer = Linear::<In3, Out3>::new(&mut rng);
        layer.bias = vec![0.5, -0.25];
        let x = random::<In3>(3, &mut rng);
        let y = layer.forward(&x);
        // y_l[n, o, m] = sum_i x_l[n, i, m] W_l[i, o] + [l = 0] b[o], looped naively.
        let expected: Vec<Vec<f32>> = In3::degrees()
            .into_iter()
            .zip(Out3::degrees())
            .enumerate()
            .map(|(k, (di, d_o))| {
                let w = layer.weight(k).unwrap_or_default();
                let xb = &x.blocks()[k];
                let mut out = Vec::new();
                for n in 0..3 {
                    for o in 0..d_o.channels {
                        for m in 0..di.width() {
                            let mut acc = if di.l == 0 { layer.bias()[o] } else { 0.0 };
                            for i in 0..di.channels {
                                acc +=
                                    xb.get(n, i, m).unwrap_or(f32::NAN) * w[i * d_o.channels + o];
                            }
                            out.push(acc);
                        }
                    }
                }
                out
            })
            .collect();
        close(&y, &expected, s);
    }

    #[test]
    fn linear_commutes_with_any_map_of_the_m_axis() {
        // Channel mixing never touches m, so L(x M) = L(x) M for any matrix M acting on the
        // 2l + 1 components of degree l > 0, in particular for D_l(R).
        let s = seed();
        let mut rng = StdRng::seed_from_u64(s);
        let layer = Linear::<In3, Out3>::new(&mut rng);
        let x = random::<In3>(2, &mut rng);
        let mix = |f: &mut dyn FnMut(&mut [f32]), blocks: &mut Vec<DegreeTensor>| {
            for b in blocks.iter_mut().skip(1) {
                let w = b.shape()[2];
                for row in b.data_mut().chunks_mut(w) {
                    f(row);
                }
            }
        };
        let mats: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..25).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect();
        let mut apply = |row: &mut [f32]| {
            let w = row.len();
            let m = &mats[w / 2 - 1];
            let v = row.to_vec();
            for (i, r) in row.iter_mut().enumerate() {
                *r = (0..w).map(|j| m[i * 5 + j] * v[j]).sum();
            }
        };
        let mut xb = x.clone().into_blocks();
        mix(&mut apply, &mut xb);
        let Ok(xm) = Features::<In3>::from_blocks(xb) else {
            panic!("mixed blocks keep their shapes")
        };
        let left = layer.forward(&xm);
        let mut right = layer.forward(&x).into_blocks();
        mix(&mut apply, &mut right);
        let right: Vec<Vec<f32>> = right.into_iter().map(DegreeTensor::into_vec).collect();
        close(&left, &right, s);
    }

    #[test]
    fn linear_without_scalars_has_no_bias() -> Result<(), Error> {
        let layer = Linear::<VectorsOnly, VectorsOut>::from_weights(vec![vec![1.0; 6]], vec![])?;
        assert!(layer.bias().is_empty());
        let x = Features::<VectorsOnly>::from_fn(1, |_, _, c, m| (c * 3 + m) as f32);
        let y = layer.forward(&x);
        assert_eq!(y.degree::<Degree<1>>().get(0, 2, 1), Some(1.0 + 4.0));
        Ok(())
    }

    #[test]
    fn from_weights_rejects_wrong_counts_sizes_and_nan() {
        type L = Linear<In3, Out3>;
        let good = || vec![vec![0.0; 6], vec![0.0; 8], vec![0.0; 2]];
        assert!(L::from_weights(good(), vec![0.0; 2]).is_ok());
        assert!(matches!(
            L::from_weights(good()[..2].to_vec(), vec![0.0; 2]),
            Err(Error::LengthMismatch {
                expected: 3,
                found: 2,
                ..
            })
        ));
        let mut wrong = good();
        wrong[1].pop();
        assert!(matches!(
            L::from_weights(wrong, vec![0.0; 2]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            L::from_weights(good(), vec![0.0; 3]),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 3,
                ..
            })
        ));
        let mut nan = good();
        nan[2][1] = f32::INFINITY;
        assert!(matches!(
            L::from_weights(nan, vec![0.0; 2]),
            Err(Error::NonFinite { index: 15, .. })
        ));
    }

    #[test]
    fn chained_layers_equal_sequential_application() {
        let s = seed();
        let mut rng = StdRng::seed_from_u64(s);
        let a = Linear::<In3, Out3>::new(&mut rng);
        let b = Linear::<Out3, In3>::new(&mut rng);
        let x = random::<In3>(2, &mut rng);
        let seq = b.forward(&Activation::<Out3, Relu>::new(Relu).forward(&a.forward(&x)));
        let net = a.then(Activation::<Out3, Relu>::new(Relu)).then(b);
        let chained = Layer::forward(&net, &x);
        let expected: Vec<Vec<f32>> = seq
            .into_blocks()
            .into_iter()
            .map(DegreeTensor::into_vec)
            .collect();
        close(&chained, &expected, s);
    }

    #[test]
    fn initial_weights_have_variance_one_over_fan_in() {
        let mut rng = StdRng::seed_from_u64(seed());
        #[fiber(0:64)]
        struct Wide;
        let layer = Linear::<Wide, Wide>::new(&mut rng);
        let w = layer.weight(0).unwrap_or_default();
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(
            (var * 64.0 - 1.0).abs() < 0.1,
            "variance * fan_in = {}",
            var * 64.0
        );
    }

    #[test]
    fn e3_linear_mixes_only_equal_degree_and_parity_and_biases_even_scalars_only(
    ) -> Result<(), Error> {
        use crate::exec::Session;
        let mut r = StdRng::seed_from_u64(seed());
        let fin: FiberSpec = "0o:3, 1e:2, 2o:2".parse()?;
        let fout: FiberSpec = "0o:2, 1o:3, 2o:1".parse()?;
        // 1e -> 1o would not commute with inversion: no term; no bias on the pseudoscalars
        let odd = LinearLayer::new(&fin, &fout, true, &mut r)?;
        assert_eq!(odd.fiber_out(), &"0o:2, 2o:1".parse::<FiberSpec>()?);
        assert!(odd.bias.is_none());
        let even = LinearLayer::new(&"0e:3, 1o:2".parse()?, &"0e:2, 1e:2".parse()?, true, &mut r)?;
        assert_eq!(even.fiber_out(), &"0e:2".parse::<FiberSpec>()?);
        assert!(even.bias.is_some());
        assert!(matches!(
            LinearLayer::new(&"1o:2".parse()?, &"1e:2".parse()?, false, &mut r),
            Err(Error::Empty { .. })
        ));
        // features of the right degrees and channels but another parity are refused
        let mut s = Session::new();
        let wrong: FiberSpec = "0e:3, 1e:2, 2e:2".parse()?;
        let x = FeatureTensors::<crate::layers::graph::N>::input(&mut s, "x", &wrong);
        assert!(matches!(
            odd.build(&mut s, "l.", &x),
            Err(Error::FiberMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn graph_linear_matches_the_eager_layer_and_loads_e3nn_layout() -> Result<(), Error> {
        #[se3_macros::fiber(0:3, 1:2)]
        struct A;
        #[se3_macros::fiber(0:2, 1:4)]
        struct B;
        let (mut r, seed) = crate::testing::rng();
        let lin = Linear::<A, B>::new(&mut r);
        let n = 5;
        let x = Features::<A>::from_fn(n, |_, _, _, _| r.gen_range(-1.0..1.0));
        let want = lin.forward(&x);
        let mut s = Session::new();
        let gx = GraphFeatures::<A>::input(&mut s, "x");
        lin.build(&mut s, "lin.", &gx)?.output(&mut s, "y");
        // e3nn layout: flat weight, scaled by 1/sqrt(c_in) at load
        let mut src = std::collections::HashMap::new();
        let mut flat = Vec::new();
        for (k, d) in A::spec().degrees().iter().enumerate() {
            let w = lin.weight(k).unwrap_or_default();
            flat.extend(w.iter().map(|v| v * (d.channels as f32).sqrt()));
        }
        src.insert(
            "w.weight".to_string(),
            crate::exec::F32Tensor {
                shape: vec![flat.len()],
                data: flat,
            },
        );
        src.insert(
            "w.bias".to_string(),
            crate::exec::F32Tensor {
                shape: vec![2],
                data: lin.bias().to_vec(),
            },
        );
        let e3 = LinearLayer::load(
            &mut src,
            "w.",
            &A::spec(),
            &B::spec(),
            LinearLayout::E3nn,
            true,
        )?;
        e3.build(&mut s, "e3.", gx.untyped())?.output(&mut s, "z");
        for (k, b) in x.blocks().iter().enumerate() {
            let l = A::spec().degrees()[k].l;
            s.set(&format!("x.{l}"), b.data().to_vec(), &b.shape())?;
        }
        s.run()?;
        for (k, b) in want.blocks().iter().enumerate() {
            let l = B::spec().degrees()[k].l;
            let w: Vec<f64> = b.data().iter().map(|&v| f64::from(v)).collect();
            for name in ["y", "z"] {
                let g: Vec<f64> = s
                    .get(&format!("{name}.{l}"))?
                    .data
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                assert!(
                    crate::testing::rel_error(&g, &w) < 1e-5,
                    "seed {seed} {name} degree {l}"
                );
            }
        }
        Ok(())
    }
}
