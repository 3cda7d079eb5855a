//! `Features<F>`: the eager value of a fiber on a set of nodes, one owned f32 tensor of
//! shape `[nodes, channels, 2l + 1]` per degree, with typed per-degree access and the
//! operations whose legality the fiber rules decide.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Add, Sub};

use super::degree::DegreeMarker;
use super::fiber::Fiber;
use super::rules::{Bias, DegreeOf, HasDegree, Invariant, SameDegrees, SameFiber, ScalarOnly};
use super::spec::{DegreeSpec, DegreeTable};
use crate::layers::activation::ScalarActivation;
use crate::Error;

/// A dense f32 tensor of shape `[nodes, channels, 2l + 1]`, row-major (the m axis is the
/// fastest, ordered m = -l..=l as in e3nn).
#[derive(Debug, Clone, PartialEq)]
pub struct DegreeTensor {
    shape: [usize; 3],
    data: Vec<f32>,
}

impl DegreeTensor {
    /// A tensor of zeros.
    pub fn zeros(shape: [usize; 3]) -> Self {
        DegreeTensor {
            shape,
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor over row-major `data`.
    ///
    /// # Errors
    /// `ShapeMismatch` if `data.len()` is not the product of `shape`.
    pub fn from_vec(shape: [usize; 3], data: Vec<f32>) -> Result<Self, Error> {
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "degree tensor data".to_string(),
                expected: vec![expected],
                found: vec![data.len()],
            });
        }
        Ok(DegreeTensor { shape, data })
    }

    /// `[nodes, channels, 2l + 1]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The row-major values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The row-major values, writable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The value at `[node, channel, m + l]`, `None` out of range.
    pub fn get(&self, node: usize, channel: usize, m: usize) -> Option<f32> {
        let [n, c, w] = self.shape;
        if node >= n || channel >= c || m >= w {
            return None;
        }
        self.data.get((node * c + channel) * w + m).copied()
    }

    /// The values, consumed.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// Per-node invariants, shape `[nodes, channels]` row-major: what an energy, a loss or an
/// attention logit is made of. Only obtainable from degree 0 ([`Features::invariant`]) or
/// as norms ([`Features::norms`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Invariants {
    nodes: usize,
    channels: usize,
    data: Vec<f32>,
}

impl Invariants {
    /// `[nodes, channels]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.nodes, self.channels]
    }

    /// The row-major values.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The sum over nodes and channels, such as a total energy.
    pub fn sum(&self) -> f32 {
        self.data.iter().sum()
    }
}

/// The features of fiber `F` on `nodes` nodes: for each degree of `F`, in order, a
/// [`DegreeTensor`] of shape `[nodes, channels, 2l + 1]`.
///
/// The fiber is a type parameter: `Features<Hidden> + Features<Atoms>` does not compile
/// ([`SameFiber`]), `h.degree::<Degree<1>>()` compiles only if `F` has degree 1
/// ([`DegreeOf`]), ReLU applies only to degree 0 ([`ScalarOnly`]).
pub struct Features<F: Fiber> {
    nodes: usize,
    blocks: Vec<DegreeTensor>,
    fiber: PhantomData<F>,
}

impl<F: Fiber> Clone for Features<F> {
    fn clone(&self) -> Self {
        Features {
            nodes: self.nodes,
            blocks: self.blocks.clone(),
            fiber: PhantomData,
        }
    }
}

impl<F: Fiber> PartialEq for Features<F> {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes && self.blocks == other.blocks
    }
}

impl<F: Fiber> fmt::Debug for Features<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Features")
            .field("fiber", &F::NAME)
            .field("spec", &F::spec().to_string())
            .field("nodes", &self.nodes)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl<F: Fiber> Features<F> {
    /// Zero features on `nodes` nodes.
    pub fn zeros(nodes: usize) -> Self {
        Self::from_fn(nodes, |_, _, _, _| 0.0)
    }

    /// Features whose value at degree `d`, node `n`, channel `c`, component `m` (0-based,
    /// m = 0 is -l) is `f(d, n, c, m)`.
    pub fn from_fn(
        nodes: usize,
        mut f: impl FnMut(DegreeSpec, usize, usize, usize) -> f32,
    ) -> Self {
        let blocks = F::DEGREES
            .into_iter()
            .map(|d| {
                let mut t = DegreeTensor::zeros([nodes, d.channels, d.width()]);
                let mut i = 0;
                for n in 0..nodes {
                    for c in 0..d.channels {
                        for m in 0..d.width() {
                            t.data[i] = f(d, n, c, m);
                            i += 1;
                        }
                    }
                }
                t
            })
            .collect();
        Features {
            nodes,
            blocks,
            fiber: PhantomData,
        }
    }

    /// Features from one tensor per degree of `F`, in the fiber's degree order.
    ///
    /// # Errors
    /// `LengthMismatch` if the number of blocks is not the number of degrees,
    /// `ShapeMismatch` if a block is not `[nodes, channels, 2l + 1]` (nodes taken from the
    /// first block), `NonFinite` if a value is NaN or infinite.
    pub fn from_blocks(blocks: Vec<DegreeTensor>) -> Result<Self, Error> {
        let table = F::DEGREES;
        if blocks.len() != table.len() {
            return Err(Error::LengthMismatch {
                what: "feature blocks (one per degree of the fiber)",
                expected: table.len(),
                found: blocks.len(),
            });
        }
        let nodes = blocks.first().map_or(0, |b| b.shape[0]);
        for (b, d) in blocks.iter().zip(table) {
            let expected = [nodes, d.channels, d.width()];
            if b.shape != expected {
                return Err(Error::ShapeMismatch {
                    what: format!("block of degree {} of fiber {}", d.l, F::NAME),
                    expected: expected.to_vec(),
                    found: b.shape.to_vec(),
                });
            }
            if let Some((index, value)) = b.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: "feature block",
                    index,
                    value: f64::from(*value),
                });
            }
        }
        Ok(Features {
            nodes,
            blocks,
            fiber: PhantomData,
        })
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The fiber's degrees (run time).
    pub fn degrees(&self) -> DegreeTable {
        F::DEGREES
    }

    /// One block per degree, in degree order.
    pub fn blocks(&self) -> &[DegreeTensor] {
        &self.blocks
    }

    /// The blocks, consumed.
    pub fn into_blocks(self) -> Vec<DegreeTensor> {
        self.blocks
    }

    /// The block of degree `l` chosen at run time, `None` if the fiber lacks it.
    pub fn block_of(&self, l: usize) -> Option<&DegreeTensor> {
        let index = F::DEGREES.into_iter().position(|d| d.l == l)?;
        self.blocks.get(index)
    }

    /// The `[nodes, channels, 2l + 1]` block of degree `D`; compiles only if `F` has it.
    pub fn degree<D: DegreeOf<F>>(&self) -> &DegreeTensor {
        &self.blocks[D::INDEX]
    }

    /// The block of degree `D`, writable; compiles only if `F` has it.
    pub fn degree_mut<D: DegreeOf<F>>(&mut self) -> &mut DegreeTensor {
        &mut self.blocks[D::INDEX]
    }

    /// The residual connection `self + skip`; compiles only if `skip` has fiber `F`.
    ///
    /// # Errors
    /// `LengthMismatch` if the node counts differ.
    pub fn residual<G: SameFiber<F>>(&self, skip: &G) -> Result<Features<F>, Error> {
        self.zip_with(G::same(skip), |a, b| a + b)
    }

    /// Channel-wise concatenation: for each degree, the channels of `self` then those of
    /// `other`. Compiles only if both fibers have the same degrees and parities.
    ///
    /// # Errors
    /// `LengthMismatch` if the node counts differ.
    #[rustfmt::skip]
    pub fn concat<G: Fiber>(&self, other: &Features<G>) -> Result<Features<Cat<F, G>>, Error> where Cat<F, G>: SameDegrees {
        self.check_nodes(other.nodes)?;
        let blocks = self
            .blocks
            .iter()
            .zip(&other.blocks)
            .map(|(a, b)| {
                let [n, ca, w] = a.shape;
                let cb = b.shape[1];
                let mut data = Vec::with_capacity(n * (ca + cb) * w);
                for node in 0..n {
                    data.extend_from_slice(&a.data[node * ca * w..(node + 1) * ca * w]);
                    data.extend_from_slice(&b.data[node * cb * w..(node + 1) * cb * w]);
                }
                DegreeTensor {
                    shape: [n, ca + cb, w],
                    data,
                }
            })
            .collect();
        Ok(Features {
            nodes: self.nodes,
            blocks,
            fiber: PhantomData,
        })
    }

    /// Applies the pointwise activation `act` to degree `D` (`h.activate(Relu, Degree::<0>)`),
    /// other degrees unchanged; compiles only for `D = Degree<0>` (a pointwise function of
    /// a vector's components is not equivariant).
    pub fn activate<A: ScalarActivation, D: ScalarOnly<A> + DegreeOf<F>>(
        &self,
        act: A,
        _degree: D,
    ) -> Features<F> {
        let mut out = self.clone();
        for v in &mut out.blocks[D::INDEX].data {
            *v = act.apply(*v);
        }
        out
    }

    /// Adds `bias[c]` to channel `c` of degree `D`; compiles only for `D = Degree<0>`.
    ///
    /// # Errors
    /// `LengthMismatch` if `bias` does not have one value per channel of `D`.
    pub fn add_bias<D: ScalarOnly<Bias> + DegreeOf<F>>(
        &self,
        bias: &[f32],
    ) -> Result<Features<F>, Error> {
        let channels = D::CHANNELS;
        if bias.len() != channels {
            return Err(Error::LengthMismatch {
                what: "bias (one value per channel)",
                expected: channels,
                found: bias.len(),
            });
        }
        let mut out = self.clone();
        let block = &mut out.blocks[D::INDEX];
        for (i, v) in block.data.iter_mut().enumerate() {
            *v += bias[i % channels];
        }
        Ok(out)
    }

    /// The invariant `[nodes, channels]` values of degree `D`; compiles only for degree 0
    /// (even degree 0 in E(3) fibers).
    pub fn invariant<D: DegreeOf<F> + Invariant<F>>(&self) -> Invariants {
        let b = &self.blocks[D::INDEX];
        Invariants {
            nodes: b.shape[0],
            channels: b.shape[1],
            data: b.data.clone(),
        }
    }

    /// The per-channel norms |x_{n,c}| = sqrt(sum_m x_{n,c,m}^2) of degree `D`: invariant
    /// for every degree under rotations (and under inversion).
    pub fn norms<D: DegreeOf<F>>(&self) -> Invariants {
        let b = &self.blocks[D::INDEX];
        let [n, c, w] = b.shape;
        let data = b
            .data
            .chunks(w)
            .map(|x| x.iter().map(|v| v * v).sum::<f32>().sqrt())
            .collect();
        Invariants {
            nodes: n,
            channels: c,
            data,
        }
    }

    fn check_nodes(&self, other: usize) -> Result<(), Error> {
        if self.nodes != other {
            return Err(Error::LengthMismatch {
                what: "nodes of combined features",
                expected: self.nodes,
                found: other,
            });
        }
        Ok(())
    }

    fn zip_with(&self, other: &Features<F>, f: impl Fn(f32, f32) -> f32) -> Result<Self, Error> {
        self.check_nodes(other.nodes)?;
        let mut out = self.clone();
        for (a, b) in out.blocks.iter_mut().zip(&other.blocks) {
            for (x, y) in a.data.iter_mut().zip(&b.data) {
                *x = f(*x, *y);
            }
        }
        Ok(out)
    }

    /// Features with `blocks` assumed to match `F` (internal constructor for layers).
    pub(crate) fn from_blocks_unchecked(nodes: usize, blocks: Vec<DegreeTensor>) -> Self {
        debug_assert_eq!(blocks.len(), F::DEGREES.len());
        Features {
            nodes,
            blocks,
            fiber: PhantomData,
        }
    }
}

/// `&a + &b` for features of one fiber (checked by [`SameFiber`]), a `Result` because the
/// node counts are only known at run time: `(&a + &b)?`.
///
/// # Errors
/// `LengthMismatch` if the node counts differ.
impl<F: Fiber, G: SameFiber<F>> Add<&G> for &Features<F> {
    type Output = Result<Features<F>, Error>;
    fn add(self, rhs: &G) -> Self::Output {
        self.zip_with(G::same(rhs), |a, b| a + b)
    }
}

/// `a + b` for features of one fiber, by value: `(a + b)?`.
///
/// # Errors
/// `LengthMismatch` if the node counts differ.
impl<F: Fiber, G: SameFiber<F>> Add<G> for Features<F> {
    type Output = Result<Features<F>, Error>;
    fn add(self, rhs: G) -> Self::Output {
        self.zip_with(G::same(&rhs), |a, b| a + b)
    }
}

/// `a - b` for features of one fiber: `(a - b)?`.
///
/// # Errors
/// `LengthMismatch` if the node counts differ.
impl<F: Fiber, G: SameFiber<F>> Sub<G> for Features<F> {
    type Output = Result<Features<F>, Error>;
    fn sub(self, rhs: G) -> Self::Output {
        self.zip_with(G::same(&rhs), |a, b| a - b)
    }
}

/// `&a - &b` for features of one fiber: `(&a - &b)?`.
///
/// # Errors
/// `LengthMismatch` if the node counts differ.
impl<F: Fiber, G: SameFiber<F>> Sub<&G> for &Features<F> {
    type Output = Result<Features<F>, Error>;
    fn sub(self, rhs: &G) -> Self::Output {
        self.zip_with(G::same(rhs), |a, b| a - b)
    }
}

/// The channel-wise concatenation of fibers `A` and `B`, which have the same degrees:
/// channels of degree l are `A`'s then `B`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cat<A, B>(PhantomData<(A, B)>);

/// A `Fiber` for any `A`, `B`; features of it are only built by [`Features::concat`],
/// which requires `Cat<A, B>: SameDegrees`.
#[diagnostic::do_not_recommend]
impl<A: Fiber, B: Fiber> Fiber for Cat<A, B> {
    const NAME: &'static str = "Cat";
    const DEGREES: DegreeTable = DegreeTable::concat(A::DEGREES, B::DEGREES);
    type Group = A::Group;
    type Irreps = A::Irreps;
}

impl<A, B, D> HasDegree<D> for Cat<A, B>
where
    D: DegreeMarker,
    A: HasDegree<D>,
    B: HasDegree<D>,
    Cat<A, B>: SameDegrees,
{
    const CHANNELS: usize = <A as HasDegree<D>>::CHANNELS + <B as HasDegree<D>>::CHANNELS;
    const INDEX: usize = <A as HasDegree<D>>::INDEX;
    type Parity = <A as HasDegree<D>>::Parity;
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::fiber::Degree;
    use crate::testing::{random_rotation, seed};
    use se3_macros::fiber;

    #[fiber(0:3, 1:2)]
    struct Small;
    #[fiber(0:1, 1:4)]
    struct Other;
    #[fiber("0e:2, 1o:1")]
    struct Polar;

    fn random<F: Fiber>(nodes: usize, rng: &mut StdRng) -> Features<F> {
        Features::from_fn(nodes, |_, _, _, _| rng.gen_range(-1.0..1.0))
    }

    #[test]
    fn degree_returns_the_block_of_that_degree() {
        let h =
            Features::<Small>::from_fn(2, |d, n, c, m| (d.l * 1000 + n * 100 + c * 10 + m) as f32);
        assert_eq!(h.degree::<Degree<0>>().shape(), [2, 3, 1]);
        assert_eq!(h.degree::<Degree<1>>().shape(), [2, 2, 3]);
        assert_eq!(h.degree::<Degree<1>>().get(1, 1, 2), Some(1112.0));
        assert_eq!(h.degree::<Degree<0>>().get(1, 2, 0), Some(120.0));
        assert_eq!(h.block_of(1), Some(h.degree::<Degree<1>>()));
        assert_eq!(h.block_of(2), None);
        assert_eq!(h.degree::<Degree<1>>().get(2, 0, 0), None);
    }

    #[test]
    fn from_blocks_rejects_wrong_count_shape_and_non_finite() -> Result<(), Error> {
        let ok = vec![
            DegreeTensor::zeros([2, 3, 1]),
            DegreeTensor::zeros([2, 2, 3]),
        ];
        assert_eq!(Features::<Small>::from_blocks(ok)?.nodes(), 2);
        let one = vec![DegreeTensor::zeros([2, 3, 1])];
        assert!(matches!(
            Features::<Small>::from_blocks(one),
            Err(Error::LengthMismatch {
                expected: 2,
                found: 1,
                ..
            })
        ));
        let shape = vec![
            DegreeTensor::zeros([2, 3, 1]),
            DegreeTensor::zeros([2, 3, 3]),
        ];
        assert!(matches!(
            Features::<Small>::from_blocks(shape),
            Err(Error::ShapeMismatch { .. })
        ));
        let nodes = vec![
            DegreeTensor::zeros([2, 3, 1]),
            DegreeTensor::zeros([1, 2, 3]),
        ];
        assert!(matches!(
            Features::<Small>::from_blocks(nodes),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut nan = DegreeTensor::zeros([2, 2, 3]);
        nan.data_mut()[4] = f32::NAN;
        assert!(matches!(
            Features::<Small>::from_blocks(vec![DegreeTensor::zeros([2, 3, 1]), nan]),
            Err(Error::NonFinite { index: 4, .. })
        ));
        assert!(matches!(
            DegreeTensor::from_vec([1, 2, 3], vec![0.0; 5]),
            Err(Error::ShapeMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn add_sub_and_residual_act_elementwise() -> Result<(), Error> {
        let mut rng = StdRng::seed_from_u64(seed());
        let a = random::<Small>(3, &mut rng);
        let b = random::<Small>(3, &mut rng);
        let sum = (&a + &b)?;
        let back = (sum.clone() - b.clone())?;
        for (x, y) in back.blocks().iter().zip(a.blocks()) {
            for (u, v) in x.data().iter().zip(y.data()) {
                assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()));
            }
        }
        assert_eq!(a.residual(&b)?, sum);
        assert_eq!((a.clone() + b.clone())?, sum);
        let short = random::<Small>(2, &mut rng);
        assert!(matches!(
            a.residual(&short),
            Err(Error::LengthMismatch {
                expected: 3,
                found: 2,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn concat_stacks_channels_degree_by_degree() -> Result<(), Error> {
        let a =
            Features::<Small>::from_fn(2, |d, n, c, m| (d.l * 1000 + n * 100 + c * 10 + m) as f32);
        let b = Features::<Other>::from_fn(2, |d, n, c, m| {
            -((d.l * 1000 + n * 100 + c * 10 + m) as f32)
        });
        let ab = a.concat(&b)?;
        assert_eq!(<Cat<Small, Other> as Fiber>::spec().to_string(), "0:4, 1:6");
        assert_eq!(ab.degree::<Degree<1>>().shape(), [2, 6, 3]);
        assert_eq!(ab.degree::<Degree<1>>().get(1, 1, 2), Some(1112.0));
        assert_eq!(ab.degree::<Degree<1>>().get(1, 2, 2), Some(-1102.0));
        assert_eq!(ab.degree::<Degree<0>>().get(0, 3, 0), Some(-0.0));
        assert_eq!(<Degree<1> as DegreeOf<Cat<Small, Other>>>::CHANNELS, 6);
        Ok(())
    }

    #[test]
    fn activation_and_bias_touch_only_degree_zero() -> Result<(), Error> {
        let h = Features::<Small>::from_fn(2, |_, _, c, m| c as f32 - 1.0 + m as f32);
        let act = h.activate(crate::layers::Relu, Degree::<0>);
        assert_eq!(act.degree::<Degree<1>>(), h.degree::<Degree<1>>());
        assert!(act.degree::<Degree<0>>().data().iter().all(|v| *v >= 0.0));
        assert_eq!(act.degree::<Degree<0>>().get(0, 2, 0), Some(1.0));
        let biased = h.add_bias::<Degree<0>>(&[1.0, 2.0, 3.0])?;
        assert_eq!(biased.degree::<Degree<0>>().get(1, 2, 0), Some(4.0));
        assert_eq!(biased.degree::<Degree<1>>(), h.degree::<Degree<1>>());
        assert!(matches!(
            h.add_bias::<Degree<0>>(&[1.0]),
            Err(Error::LengthMismatch {
                expected: 3,
                found: 1,
                ..
            })
        ));
        Ok(())
    }

    /// A random orthogonal 3x3 matrix: a Haar-random rotation ([`random_rotation`], exact in
    /// f64), times -1 half of the time (det -1).
    fn random_orthogonal(rng: &mut StdRng) -> [[f32; 3]; 3] {
        let r = random_rotation(rng);
        let sign = if rng.gen_bool(0.5) { -1.0 } else { 1.0 };
        std::array::from_fn(|i| std::array::from_fn(|j| (sign * r[(i, j)]) as f32))
    }

    #[test]
    fn norms_are_invariant_under_orthogonal_maps_of_each_vector() {
        let s = seed();
        let mut rng = StdRng::seed_from_u64(s);
        let h = random::<Small>(4, &mut rng);
        let q = random_orthogonal(&mut rng);
        let mut rotated = h.clone();
        for chunk in rotated.degree_mut::<Degree<1>>().data_mut().chunks_mut(3) {
            let v = [chunk[0], chunk[1], chunk[2]];
            for (out, row) in chunk.iter_mut().zip(&q) {
                *out = row.iter().zip(&v).map(|(a, b)| a * b).sum();
            }
        }
        let before = h.norms::<Degree<1>>();
        let after = rotated.norms::<Degree<1>>();
        assert_eq!(before.shape(), [4, 2]);
        for (a, b) in before.data().iter().zip(after.data()) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "seed {s}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn invariant_reads_even_scalars() {
        let p = Features::<Polar>::from_fn(3, |d, n, c, _| (d.l + n + c) as f32);
        let e = p.invariant::<Degree<0>>();
        assert_eq!(e.shape(), [3, 2]);
        // node n, channel c holds n + c: sum over n < 3, c < 2.
        assert_eq!(e.sum(), 9.0);
    }
}
