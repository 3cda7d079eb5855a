//! Typed tensor-product paths l1 x l2 -> j between fibers: which paths a tensor product
//! has is checked at compile time (degrees present, Clebsch-Gordan selection rule, parity,
//! SE(3) vs E(3)); [`TensorProductLayer`] is its graph forward (full or depthwise) with the
//! Clebsch-Gordan coefficients of `so3::clebsch_gordan`.

use std::marker::PhantomData;

use luminal::prelude::*;
use rand::Rng;

use super::graph::{
    bmm, constant, dims, expand_at, mm, permute, reshape, retype, FeatureTensors, GraphFeatures,
    Param, X,
};
use crate::exec::Session;
use crate::fiber::FiberSpec;
use crate::so3::clebsch_gordan;
use crate::Error;

use crate::fiber::{
    ConservesParity, CouplesTo, DegreeMarker, DegreeOf, Fiber, Parity, ParityMarker, SameGroupAs,
};

/// The run-time record of one path: input degrees `l1` (of the first fiber), `l2` (of the
/// second), output degree `j`, and the output parity for E(3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathSpec {
    /// Degree taken from the first input.
    pub l1: usize,
    /// Degree taken from the second input.
    pub l2: usize,
    /// Output degree, |l1 - l2| <= j <= l1 + l2.
    pub j: usize,
    /// Output parity (p1 * p2) for E(3), `None` for SE(3).
    pub parity: Option<Parity>,
}

/// A Clebsch-Gordan path `L1 x L2 -> J` as a type; constructible only if
/// |l1 - l2| <= j <= l1 + l2 ([`CouplesTo`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<L1, L2, J>(PhantomData<(L1, L2, J)>);

impl<L1: DegreeMarker, L2: DegreeMarker, J: DegreeMarker> Path<L1, L2, J> {
    /// The path; compiles only if |l1 - l2| <= j <= l1 + l2.
    #[rustfmt::skip]
    pub fn new() -> Self where J: CouplesTo<L1, L2> {
        Path(PhantomData)
    }

    /// Its degrees (SE(3), no parity).
    pub fn spec(&self) -> PathSpec {
        PathSpec {
            l1: L1::L,
            l2: L2::L,
            j: J::L,
            parity: None,
        }
    }
}

/// A tensor product of features of fiber `A` with features of fiber `B` into fiber `Out`,
/// as a list of paths added with [`TensorProduct::path`]. All three fibers belong to one
/// group ([`SameGroupAs`]).
#[derive(Debug, Clone)]
pub struct TensorProduct<A, B, Out> {
    paths: Vec<PathSpec>,
    fibers: PhantomData<fn(A, B) -> Out>,
}

impl<A, B, Out> Default for TensorProduct<A, B, Out>
where
    A: Fiber,
    B: Fiber,
    Out: Fiber,
    B::Group: SameGroupAs<A::Group>,
    Out::Group: SameGroupAs<A::Group>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Fiber, B: Fiber, Out: Fiber> TensorProduct<A, B, Out> {
    /// A tensor product with no path yet; compiles only if `A`, `B` and `Out` are all
    /// SE(3) or all E(3) fibers.
    #[rustfmt::skip]
    pub fn new() -> Self where B::Group: SameGroupAs<A::Group>, Out::Group: SameGroupAs<A::Group> {
        TensorProduct {
            paths: Vec::new(),
            fibers: PhantomData,
        }
    }

    /// Adds the path `L1 x L2 -> J`: compiles only if `A` has `L1`, `B` has `L2`, `Out`
    /// has `J`, |l1 - l2| <= j <= l1 + l2, and (E(3)) the parity of `J` in `Out` is the
    /// product of the parities of `L1` in `A` and `L2` in `B`.
    #[rustfmt::skip]
    pub fn path<L1: DegreeOf<A>, L2: DegreeOf<B>, J: DegreeOf<Out> + CouplesTo<L1, L2>>(mut self) -> Self where J::Parity: ConservesParity<L1::Parity, L2::Parity> {
        self.paths.push(PathSpec {
            l1: L1::L,
            l2: L2::L,
            j: J::L,
            parity: <J::Parity as ParityMarker>::PARITY,
        });
        self
    }

    /// The paths in the order they were added.
    pub fn paths(&self) -> &[PathSpec] {
        &self.paths
    }

    /// The graph layer of these paths with fresh weights.
    ///
    /// # Errors
    /// As [`TensorProductLayer::new`] (none for paths admitted by the type checks, except
    /// `LengthMismatch` for a depthwise product whose channel counts do not match).
    pub fn layer(
        &self,
        mode: ProductMode,
        rng: &mut impl Rng,
    ) -> Result<TensorProductLayer, Error> {
        TensorProductLayer::new(&A::spec(), &B::spec(), &Out::spec(), &self.paths, mode, rng)
    }

    /// Adds the product of `a` and `b` to a graph with `layer` (made by [`Self::layer`]).
    ///
    /// # Errors
    /// As [`TensorProductLayer::build`].
    pub fn build<R: Dimension>(
        layer: &TensorProductLayer,
        s: &mut Session,
        prefix: &str,
        a: &GraphFeatures<A, R>,
        b: &GraphFeatures<B, R>,
    ) -> Result<GraphFeatures<Out, R>, Error> {
        Ok(GraphFeatures::wrap(layer.build(
            s,
            prefix,
            a.untyped(),
            b.untyped(),
        )?))
    }
}

/// How the channels of the two inputs are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductMode {
    /// Every pair of channels, mixed by a learned `(c_a c_b, c_out)` matrix per path:
    /// `y_j[n, o, k] = sum_paths sum_{u,v} W[(u, v), o] sum_{i,m} C[i, m, k] a[n, u, i] b[n, v, m]`.
    Full,
    /// Channel-wise (Equiformer's depthwise product, e3nn's "uvu"): `c_out = c_a` and `b` has
    /// `c_a` channels or one (broadcast); one learned weight per channel and path:
    /// `y_j[n, u, k] = sum_paths w[u] sum_{i,m} C[i, m, k] a[n, u, i] b[n, u or 0, m]`.
    Depthwise,
}

/// A tensor product as a graph layer: for every path `l1 x l2 -> j`, the Clebsch-Gordan
/// contraction (e3nn's real `wigner_3j`, unit Frobenius norm) of a degree-`l1` feature of
/// `a` with a degree-`l2` feature of `b`, mixed over channels by learned weights (keys
/// `paths.<i>.weight`), summed over the paths that reach the same output degree. Equivariant
/// because `C` intertwines `D^{l1} (x) D^{l2}` with `D^j`; for E(3) fibers each path keeps
/// parity (`p_j = p_l1 p_l2`). Output degrees without a path are zero.
#[derive(Debug, Clone)]
pub struct TensorProductLayer {
    a: FiberSpec,
    b: FiberSpec,
    out: FiberSpec,
    paths: Vec<PathSpec>,
    mode: ProductMode,
    weights: Vec<Param>,
}

impl TensorProductLayer {
    /// A layer with weights uniform of variance `1 / fan_in` (fan-in summed over the paths
    /// into each output degree).
    ///
    /// # Errors
    /// `SelectionRule` for a path that breaks |l1 - l2| <= j <= l1 + l2, `FiberMismatch` for
    /// a degree a fiber lacks, `LengthMismatch` for depthwise channel counts that do not fit.
    pub fn new(
        a: &FiberSpec,
        b: &FiberSpec,
        out: &FiberSpec,
        paths: &[PathSpec],
        mode: ProductMode,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let mut weights = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            if !crate::so3::is_coupled(p.l1, p.l2, p.j) {
                return Err(Error::SelectionRule {
                    l1: p.l1,
                    l2: p.l2,
                    j: p.j,
                });
            }
            let missing = |f: &FiberSpec, l: usize| Error::FiberMismatch {
                fiber: "tensor product path",
                expected: format!("a fiber with degree {l}"),
                found: f.to_string(),
            };
            let ca = a.channels(p.l1).ok_or_else(|| missing(a, p.l1))?;
            let cb = b.channels(p.l2).ok_or_else(|| missing(b, p.l2))?;
            let co = out.channels(p.j).ok_or_else(|| missing(out, p.j))?;
            let fan: usize = paths
                .iter()
                .filter(|q| q.j == p.j)
                .map(|q| match mode {
                    ProductMode::Full => {
                        a.channels(q.l1).unwrap_or(1) * b.channels(q.l2).unwrap_or(1)
                    }
                    ProductMode::Depthwise => 1,
                })
                .sum();
            let bound = (3.0 / fan.max(1) as f32).sqrt();
            let shape = match mode {
                ProductMode::Full => vec![ca * cb, co],
                ProductMode::Depthwise => {
                    if co != ca || (cb != ca && cb != 1) {
                        return Err(Error::LengthMismatch {
                            what: "depthwise tensor product channels (c_out = c_a, c_b = c_a or 1)",
                            expected: ca,
                            found: if co != ca { co } else { cb },
                        });
                    }
                    vec![ca]
                }
            };
            weights.push(Param::uniform(
                format!("paths.{i}.weight"),
                shape,
                bound,
                rng,
            ));
        }
        Ok(TensorProductLayer {
            a: a.clone(),
            b: b.clone(),
            out: out.clone(),
            paths: paths.to_vec(),
            mode,
            weights,
        })
    }

    /// The output fiber.
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.out
    }

    /// Adds the product of `a` and `b` (same rows) to `s`; weights `<prefix>paths.<i>.weight`,
    /// CG tables `<prefix>cg.<l1>.<l2>.<j>`.
    ///
    /// # Errors
    /// `FiberMismatch` if `a` or `b` has another fiber than the layer's.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        a: &FeatureTensors<R>,
        b: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        a.expect_fiber(&self.a, "tensor product input a")?;
        b.expect_fiber(&self.b, "tensor product input b")?;
        let rows = dims(a.tensors()[0])[0];
        let mut out: Vec<Option<GraphTensor<(X, X, X)>>> = vec![None; self.out.degrees().len()];
        for (i, (p, w)) in self.paths.iter().zip(&self.weights).enumerate() {
            let (m1, m2, m3) = (2 * p.l1 + 1, 2 * p.l2 + 1, 2 * p.j + 1);
            let (ta, tb) = match (a.degree(p.l1), b.degree(p.l2)) {
                (Some(x), Some(y)) => (retype::<_, (X, X, X)>(x), retype::<_, (X, X, X)>(y)),
                _ => continue,
            };
            let (ca, cb) = (dims(ta)[1], dims(tb)[1]);
            let cg = clebsch_gordan(p.l1, p.l2, p.j)?;
            let c: GraphTensor<(X, X)> = constant(
                s,
                &format!("{prefix}cg.{}.{}.{}.{i}", p.l1, p.l2, p.j),
                cg.data.iter().map(|&v| v as f32).collect(),
                &[m1 * m2, m3],
            )?;
            let y: GraphTensor<(X, X, X)> = match self.mode {
                ProductMode::Full => {
                    // (n, ca, cb, m1, m2) outer product
                    let a5: GraphTensor<(X, X, X, X, X)> =
                        expand_at(expand_at::<_, (X, X, X, X)>(ta, 2, cb), 4, m2);
                    let b5: GraphTensor<(X, X, X, X, X)> =
                        expand_at(expand_at::<_, (X, X, X, X)>(tb, 1, ca), 3, m1);
                    let o: GraphTensor<(X, X)> =
                        reshape(a5 * b5, &[rows * ca * cb, (m1 * m2).into()]);
                    let t: GraphTensor<(X, X, X)> = reshape(mm(o, c), &[rows, ca * cb, m3.into()]);
                    let wt: GraphTensor<(X, X)> = w.declare(s, prefix)?;
                    let y = bmm(permute(t, &[0, 2, 1]), expand_at(wt, 0, rows));
                    permute(y, &[0, 2, 1])
                }
                ProductMode::Depthwise => {
                    let a4: GraphTensor<(X, X, X, X)> = expand_at(ta, 3, m2);
                    let tb2 = if cb == ca {
                        tb
                    } else {
                        let t2: GraphTensor<(X, X)> = reshape(tb, &[rows, m2.into()]);
                        expand_at(t2, 1, ca)
                    };
                    let b4: GraphTensor<(X, X, X, X)> = expand_at(tb2, 2, m1);
                    let o: GraphTensor<(X, X)> = reshape(a4 * b4, &[rows * ca, (m1 * m2).into()]);
                    let t: GraphTensor<(X, X, X)> = reshape(mm(o, c), &[rows, ca, m3.into()]);
                    let wt: GraphTensor<(X,)> = w.declare(s, prefix)?;
                    let w3: GraphTensor<(X, X, X)> =
                        expand_at(expand_at::<_, (X, X)>(wt, 0, rows), 2, m3);
                    t * w3
                }
            };
            let slot = self
                .out
                .degrees()
                .iter()
                .position(|d| d.l == p.j)
                .unwrap_or(0);
            out[slot] = Some(match out[slot] {
                None => y,
                Some(acc) => acc + y,
            });
        }
        let degrees = self
            .out
            .degrees()
            .iter()
            .zip(out)
            .map(|(d, t)| match t {
                Some(t) => retype(t),
                None => {
                    // a degree no path reaches: zeros of the right shape
                    let z = a.tensors()[0].graph().constant(0.0);
                    retype(expand_at::<_, (X, X, X)>(
                        expand_at::<_, (X, X)>(expand_at::<_, (X,)>(z, 0, rows), 1, d.channels),
                        2,
                        d.width(),
                    ))
                }
            })
            .collect();
        Ok(FeatureTensors::from_parts(self.out.clone(), degrees))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fiber::Degree;
    use crate::testing::{random_rotation, rel_error, rng, rotate_rows};
    use se3_macros::fiber;

    #[fiber(0:3, 1:2, 2:2)]
    struct Ta;
    #[fiber(0:1, 1:1, 2:1)]
    struct Tb;
    #[fiber(0:4, 1:2, 2:2, 3:1)]
    struct Tout;

    /// Runs `tp` on random `a`, `b` and on rotated (or parity-flipped) copies; returns the
    /// max relative equivariance error.
    fn check(
        layer: &TensorProductLayer,
        a: &FiberSpec,
        b: &FiberSpec,
        reflect: bool,
    ) -> Result<f64, Error> {
        let (mut r, seed) = rng();
        let n = 4;
        let mut s = Session::new();
        let ta = FeatureTensors::input(&mut s, "a", a);
        let tb = FeatureTensors::<luminal::prelude::Dyn<'n'>>::input(&mut s, "b", b);
        layer.build(&mut s, "tp.", &ta, &tb)?.output(&mut s, "y");
        let rot = random_rotation(&mut r);
        let draw = |f: &FiberSpec, r: &mut rand::rngs::StdRng| -> Vec<Vec<f64>> {
            f.degrees()
                .iter()
                .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
                .collect()
        };
        let (xa, xb) = (draw(a, &mut r), draw(b, &mut r));
        let act = |f: &FiberSpec, x: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, Error> {
            f.degrees()
                .iter()
                .zip(x)
                .map(|(d, v)| {
                    if reflect {
                        let p = d
                            .parity
                            .map_or(1.0, |p| if p == Parity::Odd { -1.0 } else { 1.0 });
                        Ok(v.iter().map(|x| x * p).collect())
                    } else {
                        Ok(rotate_rows(&crate::so3::wigner_d(d.l, &rot)?, v))
                    }
                })
                .collect()
        };
        let mut run = |xa: &[Vec<f64>], xb: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, Error> {
            for (name, f, x) in [("a", a, xa), ("b", b, xb)] {
                for (d, v) in f.degrees().iter().zip(x) {
                    s.set(
                        &format!("{name}.{}", d.l),
                        v.iter().map(|&v| v as f32).collect(),
                        &[n, d.channels, d.width()],
                    )?;
                }
            }
            s.run()?;
            layer
                .fiber_out()
                .degrees()
                .iter()
                .map(|d| {
                    Ok(s.get(&format!("y.{}", d.l))?
                        .data
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect())
                })
                .collect()
        };
        let y = run(&xa, &xb)?;
        let y2 = run(&act(a, &xa)?, &act(b, &xb)?)?;
        let want = act(layer.fiber_out(), &y)?;
        let mut worst = 0.0f64;
        for (i, (g, w)) in y2.iter().zip(&want).enumerate() {
            let size = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                size > 1e-4 || layer.fiber_out().degrees()[i].l == 3,
                "seed {seed}: trivial output"
            );
            worst = worst.max(rel_error(g, w));
        }
        assert!(worst < 1e-4, "seed {seed}: equivariance error {worst}");
        Ok(worst)
    }

    #[test]
    fn full_and_depthwise_products_are_equivariant() -> Result<(), Error> {
        let mut r = rng().0;
        let tp = TensorProduct::<Ta, Tb, Tout>::new()
            .path::<Degree<0>, Degree<0>, Degree<0>>()
            .path::<Degree<1>, Degree<1>, Degree<0>>()
            .path::<Degree<1>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<2>, Degree<2>>()
            .path::<Degree<2>, Degree<1>, Degree<3>>()
            .path::<Degree<2>, Degree<2>, Degree<2>>();
        check(
            &tp.layer(ProductMode::Full, &mut r)?,
            &Ta::spec(),
            &Tb::spec(),
            false,
        )?;
        #[fiber(0:3, 1:3, 2:3)]
        struct Same;
        let dw = TensorProduct::<Same, Tb, Same>::new()
            .path::<Degree<0>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<1>, Degree<2>>()
            .path::<Degree<2>, Degree<2>, Degree<0>>();
        check(
            &dw.layer(ProductMode::Depthwise, &mut r)?,
            &Same::spec(),
            &Tb::spec(),
            false,
        )?;
        Ok(())
    }

    #[test]
    fn e3_products_keep_parity_under_inversion() -> Result<(), Error> {
        let mut r = rng().0;
        #[fiber("0e:2, 1o:2")]
        struct P;
        #[fiber("0e:2, 1e:2, 2e:1")]
        struct Even;
        let tp = TensorProduct::<P, P, Even>::new()
            .path::<Degree<1>, Degree<1>, Degree<0>>()
            .path::<Degree<1>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<1>, Degree<2>>()
            .path::<Degree<0>, Degree<0>, Degree<0>>();
        check(
            &tp.layer(ProductMode::Full, &mut r)?,
            &P::spec(),
            &P::spec(),
            true,
        )?;
        check(
            &tp.layer(ProductMode::Full, &mut r)?,
            &P::spec(),
            &P::spec(),
            false,
        )?;
        Ok(())
    }

    #[fiber("0e:4, 1o:2")]
    struct Polar;
    #[fiber("0e:2, 1e:2, 2e:1")]
    struct EvenOut;

    #[test]
    fn paths_record_degrees_and_product_parity() {
        let tp = TensorProduct::<Polar, Polar, EvenOut>::new()
            .path::<Degree<1>, Degree<1>, Degree<0>>()
            .path::<Degree<1>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<1>, Degree<2>>();
        let js: Vec<_> = tp
            .paths()
            .iter()
            .map(|p| (p.l1, p.l2, p.j, p.parity))
            .collect();
        assert_eq!(
            js,
            vec![
                (1, 1, 0, Some(Parity::Even)),
                (1, 1, 1, Some(Parity::Even)),
                (1, 1, 2, Some(Parity::Even))
            ]
        );
        assert_eq!(
            Path::<Degree<2>, Degree<3>, Degree<1>>::new().spec(),
            PathSpec {
                l1: 2,
                l2: 3,
                j: 1,
                parity: None
            }
        );
    }
}
