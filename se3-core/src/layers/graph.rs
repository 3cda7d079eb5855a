//! Graph-level feature values and the tensor helpers the graph layers are built from.
//!
//! A fiber's value on a luminal graph is one tensor per degree, `[rows, channels, 2l + 1]`:
//! [`FeatureTensors`] carries them with their run-time [`FiberSpec`] (models configured from
//! JSON), [`GraphFeatures<F>`] is the same value typed by a `#[fiber]` type. Rows are nodes
//! (`Dyn<'n'>`) or edges (`Dyn<'e'>`).
//!
//! Axis sizes fixed by the fiber (channels, 2l + 1, hidden widths) are typed [`X`]
//! (`Dyn<'-'>`, luminal's "size carried by the tensor") and always set in the tensor's shape
//! tracker, so one code path serves every fiber without a dynamic dimension per channel
//! count. Node and edge axes are `Dyn<'n'>` and `Dyn<'e'>`, set by the session from the
//! inputs (`Session::derive_dim('e', ..)` when the edge count is computed).
//!
//! Luminal 0.2 traps with `Dyn<'-'>` axes (each met while building these layers): `t - 1.0`
//! leaves its constant unsized (write `t + (-1.0)`); `a + b` with a padded operand takes the
//! unpadded sizes (use [`add_views`]); reshaping a broadcast view must copy it first
//! ([`reshape`] does); inputs and weights of run-time sizes need
//! `Session::input_with_shape` / `weight_with_shape`.

use std::collections::HashMap;
use std::marker::PhantomData;

use luminal::prelude::{symbolic::Expression, *};

use crate::exec::{F32Tensor, Session};
use crate::fiber::{Fiber, FiberSpec};
use crate::ops::logical_dims;
use crate::Error;

/// An axis whose size the tensor's shape carries (channels, 2l + 1, hidden widths).
pub type X = Dyn<'-'>;
/// The node axis.
pub type N = Dyn<'n'>;
/// The edge axis.
pub type E = Dyn<'e'>;
/// `[a]`, every size carried by the shape tracker.
pub type T1 = GraphTensor<(X,)>;
/// `[a, b]`.
pub type T2 = GraphTensor<(X, X)>;
/// `[a, b, c]`.
pub type T3 = GraphTensor<(X, X, X)>;
/// `[a, b, c, d]`.
pub type T4 = GraphTensor<(X, X, X, X)>;
/// One degree of features on rows `R`: `[rows, channels, 2l + 1]`.
pub type DegreeGraphTensor<R = N> = GraphTensor<(R, X, X)>;

/// The value of a fiber on a graph, described at run time: one tensor `[rows, channels,
/// 2l + 1]` per degree of `spec`, in degree order.
#[derive(Debug, Clone)]
pub struct FeatureTensors<R: Dimension = N> {
    spec: FiberSpec,
    degrees: Vec<DegreeGraphTensor<R>>,
}

impl<R: Dimension> FeatureTensors<R> {
    /// Features from one tensor per degree of `spec`.
    ///
    /// # Errors
    /// `LengthMismatch` for a wrong number of tensors, `ShapeMismatch` if a tensor's
    /// channel or m axis disagrees with `spec`.
    pub fn new(spec: FiberSpec, degrees: Vec<DegreeGraphTensor<R>>) -> Result<Self, Error> {
        if degrees.len() != spec.degrees().len() {
            return Err(Error::LengthMismatch {
                what: "feature tensors (one per degree of the fiber)",
                expected: spec.degrees().len(),
                found: degrees.len(),
            });
        }
        for (d, t) in spec.degrees().iter().zip(&degrees) {
            let s = dims(*t);
            let want = [Expression::from(d.channels), Expression::from(d.width())];
            if s.len() != 3 || s[1] != want[0] || s[2] != want[1] {
                return Err(Error::ShapeMismatch {
                    what: format!("feature tensor of degree {}", d.l),
                    expected: vec![0, d.channels, d.width()],
                    found: s.iter().map(|e| e.to_usize().unwrap_or(0)).collect(),
                });
            }
        }
        Ok(FeatureTensors { spec, degrees })
    }

    /// Built by a layer from its own output spec (shapes correct by construction).
    pub(crate) fn from_parts(spec: FiberSpec, degrees: Vec<DegreeGraphTensor<R>>) -> Self {
        debug_assert_eq!(spec.degrees().len(), degrees.len());
        FeatureTensors { spec, degrees }
    }

    /// The fiber.
    pub fn spec(&self) -> &FiberSpec {
        &self.spec
    }

    /// Checks that these features are of fiber `expected`, the input fiber of a layer.
    ///
    /// # Errors
    /// `FiberMismatch` naming `what` (e.g. `"norm input"`), the expected and the found fiber.
    pub fn expect_fiber(&self, expected: &FiberSpec, what: &'static str) -> Result<(), Error> {
        if &self.spec == expected {
            return Ok(());
        }
        Err(Error::FiberMismatch {
            fiber: what,
            expected: expected.to_string(),
            found: self.spec.to_string(),
        })
    }

    /// The tensors, one per degree in degree order.
    pub fn tensors(&self) -> &[DegreeGraphTensor<R>] {
        &self.degrees
    }

    /// The tensor of degree `l`, if the fiber has it.
    pub fn degree(&self, l: usize) -> Option<DegreeGraphTensor<R>> {
        self.spec
            .degrees()
            .iter()
            .position(|d| d.l == l)
            .map(|i| self.degrees[i])
    }

    /// Declares one session input per degree, named `<name>.<l>`, of shape
    /// `[rows, channels, 2l + 1]` (rows dynamic).
    pub fn input(s: &mut Session, name: &str, spec: &FiberSpec) -> Self {
        let degrees = spec
            .degrees()
            .iter()
            .map(|d| {
                s.input_with_shape::<(R, X, X)>(
                    &format!("{name}.{}", d.l),
                    crate::exec::InputKind::Values,
                    &[R::const_size(), d.channels.into(), d.width().into()],
                )
            })
            .collect();
        FeatureTensors::from_parts(spec.clone(), degrees)
    }

    /// Marks every degree as a session output named `<name>.<l>`.
    pub fn output(&self, s: &mut Session, name: &str) {
        for (d, t) in self.spec.degrees().iter().zip(&self.degrees) {
            s.output(&format!("{name}.{}", d.l), *t);
        }
    }

    /// `self + other` on the degrees both have (ResidualSE3: the degrees of `self` are kept).
    pub fn residual(&self, other: &FeatureTensors<R>) -> FeatureTensors<R> {
        let degrees = self
            .spec
            .degrees()
            .iter()
            .zip(&self.degrees)
            .map(|(d, t)| match other.degree(d.l) {
                Some(o) if other.spec.channels(d.l) == Some(d.channels) => *t + o,
                _ => *t,
            })
            .collect();
        FeatureTensors::from_parts(self.spec.clone(), degrees)
    }
}

/// [`FeatureTensors`] typed by a `#[fiber]` type: the graph value a typed layer consumes and
/// produces.
#[derive(Debug, Clone)]
pub struct GraphFeatures<F: Fiber, R: Dimension = N> {
    inner: FeatureTensors<R>,
    fiber: PhantomData<F>,
}

impl<F: Fiber, R: Dimension> GraphFeatures<F, R> {
    /// Types run-time features as fiber `F`.
    ///
    /// # Errors
    /// `FiberMismatch` if their spec is not `F`.
    pub fn new(inner: FeatureTensors<R>) -> Result<Self, Error> {
        F::check_spec(inner.spec())?;
        Ok(GraphFeatures {
            inner,
            fiber: PhantomData,
        })
    }

    /// Wraps features whose spec is `F` by construction.
    pub(crate) fn wrap(inner: FeatureTensors<R>) -> Self {
        debug_assert_eq!(inner.spec(), &F::spec());
        GraphFeatures {
            inner,
            fiber: PhantomData,
        }
    }

    /// One session input per degree of `F` (see [`FeatureTensors::input`]).
    pub fn input(s: &mut Session, name: &str) -> Self {
        Self::wrap(FeatureTensors::input(s, name, &F::spec()))
    }

    /// The run-time features.
    pub fn untyped(&self) -> &FeatureTensors<R> {
        &self.inner
    }

    /// Marks every degree as an output `<name>.<l>`.
    pub fn output(&self, s: &mut Session, name: &str) {
        self.inner.output(s, name);
    }

    /// `self + skip`, degree by degree.
    pub fn residual(&self, skip: &GraphFeatures<F, R>) -> GraphFeatures<F, R> {
        Self::wrap(self.inner.residual(&skip.inner))
    }
}

/// Where a layer reads its parameters from: `get(key, shape)` returns row-major f32 data of
/// exactly `shape`.
pub trait ParamSource {
    /// The tensor stored under `key`.
    ///
    /// # Errors
    /// `MissingKey` if absent, `WrongShape` if its shape is not `shape`.
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error>;
}

impl ParamSource for HashMap<String, F32Tensor> {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let t = HashMap::get(self, key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
            expected: shape.to_vec(),
        })?;
        if t.shape != shape {
            return Err(Error::WrongShape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t.data.clone())
    }
}

/// A named parameter tensor of a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Key in the layer's checkpoint layout.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Param {
    /// Reads `key` of `shape` from `src`, checking that every value is finite.
    ///
    /// # Errors
    /// Those of `src`, and `NonFiniteWeight`.
    pub fn load(src: &mut dyn ParamSource, key: String, shape: Vec<usize>) -> Result<Self, Error> {
        let data = src.get(&key, &shape)?;
        Self::new(key, shape, data)
    }

    /// A parameter from values.
    ///
    /// # Errors
    /// `WrongShape` if `data` does not fill `shape`, `NonFiniteWeight` for NaN or inf.
    pub fn new(key: String, shape: Vec<usize>, data: Vec<f32>) -> Result<Self, Error> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::WrongShape {
                key,
                expected: shape,
                found: vec![data.len()],
            });
        }
        if let Some((index, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteWeight {
                key,
                index,
                value: *v,
            });
        }
        Ok(Param { key, shape, data })
    }

    /// Uniform values in `[-bound, bound]`.
    pub fn uniform(key: String, shape: Vec<usize>, bound: f32, rng: &mut impl rand::Rng) -> Self {
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.gen_range(-bound..=bound)).collect();
        Param { key, shape, data }
    }

    /// Declares the parameter as a session weight named `<prefix><key>` and sets its value.
    ///
    /// # Errors
    /// Those of `Session::set_weight` (none for a well-formed parameter).
    pub fn declare<S: Shape>(
        &self,
        s: &mut Session,
        prefix: &str,
    ) -> Result<GraphTensor<S>, Error> {
        let name = format!("{prefix}{}", self.key);
        constant(s, &name, self.data.clone(), &self.shape)
    }
}

/// A resident tensor of `shape` with `data` (weights and constant tables).
///
/// # Errors
/// Those of `Session::set_weight`.
pub(crate) fn constant<S: Shape>(
    s: &mut Session,
    name: &str,
    data: Vec<f32>,
    shape: &[usize],
) -> Result<GraphTensor<S>, Error> {
    let dims: Vec<Expression> = shape.iter().map(|&d| d.into()).collect();
    let t = s.weight_with_shape::<S>(name, &dims);
    // a parameter whose values were moved out is declared without them (set later; a run
    // without them is `MissingInput`)
    if !data.is_empty() || shape.iter().product::<usize>() == 0 {
        s.set_weight(name, data, shape)?;
    }
    Ok(t)
}

/// Logical sizes of `t`.
pub fn dims<S: Shape>(t: GraphTensor<S>) -> Vec<Expression> {
    logical_dims(&t.shape)
}

/// `t` reshaped (row-major) to `shape`, copied first if its view is not contiguous.
pub fn reshape<S: Shape, D: Shape>(t: GraphTensor<S>, shape: &[Expression]) -> GraphTensor<D> {
    let t = if is_plain(&t.shape) {
        t
    } else {
        t.contiguous()
    };
    GraphTensor::from_id(t.id, ShapeTracker::new(shape), t.graph_ref)
}

/// Whether a view reads its buffer row-major as is (no permutation, slice, padding or
/// broadcast axis).
pub fn is_plain(st: &ShapeTracker) -> bool {
    st.is_contiguous() && !st.is_sliced() && !st.is_padded() && !st.fake.iter().any(|f| *f)
}

/// `a + b` with the output shape taken from `a`'s logical sizes (luminal's `+` takes the
/// unpadded sizes of a padded operand).
pub fn add_views<S: Shape>(a: GraphTensor<S>, b: GraphTensor<S>) -> GraphTensor<S> {
    let out = ShapeTracker::new(&dims(a));
    let id = a
        .graph()
        .add_op(luminal::op::Add)
        .input(a.id, 0, a.shape)
        .input(b.id, 0, b.shape)
        .finish();
    GraphTensor::from_id(id, out, a.graph_ref)
}

/// `t` broadcast along a new axis `axis` of `size`.
pub fn expand_at<S: Shape, D: Shape>(
    t: GraphTensor<S>,
    axis: usize,
    size: impl Into<Expression>,
) -> GraphTensor<D> {
    let mut sh = t.shape;
    sh.expand(axis, size.into());
    GraphTensor::from_id(t.id, sh, t.graph_ref)
}

/// Changes only the type of `t` (same view).
pub fn retype<S: Shape, D: Shape>(t: GraphTensor<S>) -> GraphTensor<D> {
    GraphTensor::from_id(t.id, t.shape, t.graph_ref)
}

/// Batched matrix product `[b, m, k] x [b, k, n] -> [b, m, n]`; `b` may be a broadcast
/// (expanded) axis of either side. Lowered to the GEMM of `CpuCompiler`.
pub fn bmm(a: GraphTensor<(X, X, X)>, b: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
    let (da, db) = (dims(a), dims(b));
    let n = db[2];
    let whole = |t: &GraphTensor<(X, X, X)>| !t.shape.is_sliced() && !t.shape.is_padded();
    if da[2].to_usize() == Some(1) && whole(&a) && whole(&b) {
        // an outer product per batch entry: [b, m, n(fake)] * [b, m(fake), n] (a sum over one
        // element is folded away before the GEMM pass could see the product)
        let mut sa = a.shape;
        sa.remove_dim(2);
        sa.expand(2, n);
        let mut sb = b.shape;
        sb.remove_dim(1);
        sb.expand(1, da[1]);
        return GraphTensor::from_id(a.id, sa, a.graph_ref)
            * GraphTensor::from_id(b.id, sb, b.graph_ref);
    }
    // [b, m, n(fake), k] * [b, m(fake), n, k], summed over k.
    let a4: GraphTensor<(X, X, X, X)> = expand_at(a, 2, n);
    let bt = permute(b, &[0, 2, 1]);
    let b4: GraphTensor<(X, X, X, X)> = expand_at(bt, 1, da[1]);
    (a4 * b4).sum_reduce::<(X, X, X), Axis<3>>()
}

/// `[b, m, k] x [k, n] -> [b, m, n]` for a weight matrix shared by the batch, computed as one
/// GEMM over `b m` rows (a batch of `b` tiny GEMMs against a broadcast weight spends most of its
/// time packing).
pub fn bmm_shared(a: GraphTensor<(X, X, X)>, w: GraphTensor<(X, X)>) -> GraphTensor<(X, X, X)> {
    let (da, dw) = (dims(a), dims(w));
    let flat: GraphTensor<(X, X)> = reshape(a, &[da[0] * da[1], da[2]]);
    reshape(mm(flat, w), &[da[0], da[1], dw[1]])
}

/// Matrix product `[m, k] x [k, n] -> [m, n]` (either side may be a permuted view).
pub fn mm(a: GraphTensor<(X, X)>, b: GraphTensor<(X, X)>) -> GraphTensor<(X, X)> {
    let (da, db) = (dims(a), dims(b));
    let a3: GraphTensor<(X, X, X)> = expand_at(a, 1, db[1]);
    let mut bs = b.shape;
    bs.permute(&[1, 0]);
    let bt: GraphTensor<(X, X)> = GraphTensor::from_id(b.id, bs, b.graph_ref);
    let b3: GraphTensor<(X, X, X)> = expand_at(bt, 0, da[0]);
    (a3 * b3).sum_reduce::<(X, X), Axis<2>>()
}

/// Channels `start..end` of axis 1 of `t`, as a contiguous tensor.
pub fn channel_slice(
    t: GraphTensor<(X, X, X)>,
    start: usize,
    end: usize,
) -> GraphTensor<(X, X, X)> {
    let d = dims(t);
    let mut sh = t.shape;
    sh.slice(&[
        (Expression::from(0), d[0]),
        (Expression::from(start), Expression::from(end)),
        (Expression::from(0), d[2]),
    ]);
    GraphTensor::<(X, X, X)>::from_id(t.id, sh, t.graph_ref).contiguous()
}

/// A transposed view of a matrix.
pub fn transpose(t: GraphTensor<(X, X)>) -> GraphTensor<(X, X)> {
    let mut s = t.shape;
    s.permute(&[1, 0]);
    GraphTensor::from_id(t.id, s, t.graph_ref)
}

/// A view of `t` with its axes permuted (`perm[i]` is the source axis of axis `i`).
pub fn permute<S: Shape>(t: GraphTensor<S>, perm: &[usize]) -> GraphTensor<S> {
    let mut s = t.shape;
    s.permute(perm);
    GraphTensor::from_id(t.id, s, t.graph_ref)
}

/// Sum over axis `axis` (an index known only at run time; the typed `sum_reduce` needs it as a
/// type).
pub fn sum_axis<S: Shape, D: Shape>(t: GraphTensor<S>, axis: usize) -> GraphTensor<D> {
    let mut st = t.shape;
    let id = t
        .graph()
        .add_op(luminal::op::SumReduce(axis))
        .input(t.id, 0, st)
        .finish();
    st.remove_dim(axis);
    GraphTensor::from_id(id, st, t.graph_ref)
}

/// Maximum over axis `axis` (as [`sum_axis`]).
pub fn max_axis<S: Shape, D: Shape>(t: GraphTensor<S>, axis: usize) -> GraphTensor<D> {
    let mut st = t.shape;
    let id = t
        .graph()
        .add_op(luminal::op::MaxReduce(axis))
        .input(t.id, 0, st)
        .finish();
    st.remove_dim(axis);
    GraphTensor::from_id(id, st, t.graph_ref)
}

/// Exact (erf) GELU, `x Phi(x) = (x + |x| erf(|x| / sqrt 2)) / 2`, with erf from Abramowitz &
/// Stegun 7.1.26 (absolute error below 1.5e-7, so relative error of GELU below 2e-7).
/// Matches `torch.nn.GELU()` to float32 precision; finite for every finite input.
pub fn gelu<S: Shape>(x: GraphTensor<S>) -> GraphTensor<S> {
    let a = x.abs();
    let z = a * std::f32::consts::FRAC_1_SQRT_2;
    let t = (z * 0.327_591_1 + 1.0).recip();
    // Subtracting an f32 leaves luminal's constant unsized; add the negated value instead.
    let poly = ((((t * 1.061_405_4 + (-1.453_152_1)) * t + 1.421_413_8) * t + (-0.284_496_74)) * t
        + 0.254_829_6)
        * t;
    let erf = -(poly * (-(z * z)).exp()) + 1.0;
    (x + a * erf) * 0.5
}

/// `torch.nn.LayerNorm` over the last axis of `[rows, width]` (biased variance, `eps`),
/// followed by the affine `gamma`, `beta` (`[width]`). The unfused reference of
/// `ops::layer_norm_gelu`. The width must be a number (the input's last axis or `gamma`'s
/// length), not a dynamic dimension.
pub fn layer_norm(
    x: GraphTensor<(X, X)>,
    gamma: GraphTensor<(X,)>,
    beta: GraphTensor<(X,)>,
    eps: f32,
) -> GraphTensor<(X, X)> {
    let d = dims(x);
    // the width as a number: the input's last axis, else the affine weights' length
    let width = d[1].to_usize().or_else(|| dims(gamma)[0].to_usize());
    debug_assert!(width.is_some(), "layer_norm width must be fixed");
    let w = width.unwrap_or(1) as f32;
    let mean: GraphTensor<(X,)> = x.sum_reduce::<(X,), Axis<1>>() * (1.0 / w);
    let centered = x - expand_at::<_, (X, X)>(mean, 1, d[1]);
    let var: GraphTensor<(X,)> = (centered * centered).sum_reduce::<(X,), Axis<1>>() * (1.0 / w);
    let inv = (var + eps).sqrt().recip();
    let y = centered * expand_at::<_, (X, X)>(inv, 1, d[1]);
    y * expand_at::<_, (X, X)>(gamma, 0, d[0]) + expand_at::<_, (X, X)>(beta, 0, d[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::InputKind;
    use crate::testing::rng;
    use rand::Rng;

    fn erf_gelu(x: f64) -> f64 {
        // Series-free reference: integrate the normal density with Simpson's rule.
        let n = 2000;
        let (a, b) = (-12.0f64, x);
        let h = (b - a) / n as f64;
        let pdf = |t: f64| (-t * t / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mut s = pdf(a) + pdf(b);
        for i in 1..n {
            let t = a + i as f64 * h;
            s += if i % 2 == 1 { 4.0 } else { 2.0 } * pdf(t);
        }
        x * s * h / 3.0
    }

    #[test]
    fn gelu_matches_the_normal_cdf_and_matmuls_match_loops() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let xs: Vec<f32> = (0..40).map(|_| r.gen_range(-6.0..6.0)).collect();
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..2 * m * k).map(|_| r.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..2 * k * n).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mut s = Session::new();
        let x = s.input::<(Dyn<'a'>,)>("x", InputKind::Values);
        s.output("g", gelu(x));
        let ta = constant::<(X, X, X)>(&mut s, "a", a.clone(), &[2, m, k])?;
        let tb = constant::<(X, X, X)>(&mut s, "b", b.clone(), &[2, k, n])?;
        s.output("ab", bmm(ta, tb));
        s.set("x", xs.clone(), &[xs.len()])?;
        s.run()?;
        let g = s.get("g")?.data;
        for (x, y) in xs.iter().zip(&g) {
            let want = erf_gelu(f64::from(*x));
            assert!(
                (f64::from(*y) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "seed {seed}: gelu({x}) = {y}, expected {want}"
            );
        }
        let ab = s.get("ab")?;
        assert_eq!(ab.shape, vec![2, m, n]);
        for bi in 0..2 {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k)
                        .map(|q| a[(bi * m + i) * k + q] * b[(bi * k + q) * n + j])
                        .sum();
                    let got = ab.data[(bi * m + i) * n + j];
                    assert!((got - want).abs() < 1e-5, "seed {seed}");
                }
            }
        }
        Ok(())
    }
}
