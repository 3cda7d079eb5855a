//! The edges a convolution runs over, with their geometry and kernel basis built as graph
//! operations from the coordinates (so later autograd can flow through them).
//!
//! Convention (se3-transformer-pytorch): edge `e` carries the features of its source
//! (neighbour) `src[e]` to its destination (centre) `dst[e]`, and its relative position is
//! `rel[e] = x[dst[e]] - x[src[e]]`. An edge with `src` or `dst` equal to `-1` is missing:
//! it reads zeros and is skipped by every reduction.

use luminal::prelude::{symbolic::Expression, *};

use super::graph::{constant, dims, expand_at, mm, reshape, retype, E, N, X};
use crate::basis::{q_j, QjPrecision};
use crate::exec::Session;
use crate::ops::{gather, scatter_add};
use crate::so3::spherical_harmonics::{sh_polynomial, Convention, Normalization};
use crate::Error;

/// The edges of a graph and their geometry: `src`, `dst` (`(E,)`, f32 indices, `-1` for a
/// missing edge), `valid` (1/0), `rel` (`(E, 3)`, `x[dst] - x[src]`), `dist` (`(E,)`,
/// `|rel|`), and optional per-edge features `(E, d)` (bond embeddings, encodings).
#[derive(Debug, Clone, Copy)]
pub struct EdgeGraph {
    pub src: GraphTensor<(E,)>,
    pub dst: GraphTensor<(E,)>,
    pub valid: GraphTensor<(E,)>,
    pub rel: GraphTensor<(E, Const<3>)>,
    pub dist: GraphTensor<(E,)>,
    pub edge_features: Option<GraphTensor<(E, X)>>,
    /// `Some(k)` if the edges are grouped by destination, `k` per node: edge `i k + kk` has
    /// `dst = i` or is missing (the layout of [`crate::ops::Neighbors::edges`]). Needed by
    /// [`super::ConvPath::Grouped`] (see [`super::ConvLayer::build`]).
    pub per_node: Option<Expression>,
    /// Global tokens the attention layers attend to besides each node's neighbours
    /// (se3-transformer-pytorch's `global_feats`): for each node the `g` tokens of its cloud,
    /// `[N, g, global_feats_dim]`. `None` for graphs without them.
    pub global_features: Option<GraphTensor<(N, X, X)>>,
    /// Rotary angles of degree-0 attention ([`super::RotaryAngles`]); `None`: no rotation.
    pub rotary: Option<super::RotaryAngles>,
}

/// A tensor of the shape of `t` filled with `v`.
pub(crate) fn full_like<S: Shape>(t: GraphTensor<S>, v: f32) -> GraphTensor<S> {
    let d = dims(t);
    let c = t.graph().constant(v);
    let mut sh = c.shape;
    for (i, size) in d.iter().enumerate() {
        sh.expand(i, *size);
    }
    GraphTensor::from_id(c.id, sh, t.graph_ref)
}

impl EdgeGraph {
    /// Edges from index tensors over the points `coords (N, 3)`. `valid` is computed as
    /// `dst >= 0` when not given.
    pub fn new(
        coords: GraphTensor<(N, Const<3>)>,
        src: GraphTensor<(E,)>,
        dst: GraphTensor<(E,)>,
        valid: Option<GraphTensor<(E,)>>,
        edge_features: Option<GraphTensor<(E, X)>>,
    ) -> EdgeGraph {
        let valid = valid.unwrap_or_else(|| dst.greater_than(full_like(dst, -0.5)));
        let rel = gather(coords, dst) - gather(coords, src);
        let dist = (rel * rel).sum_reduce::<(E,), _>().sqrt();
        EdgeGraph {
            src,
            dst,
            valid,
            rel,
            dist,
            edge_features,
            per_node: None,
            global_features: None,
            rotary: None,
        }
    }

    /// The edges of a neighbour list (`k` per node, grouped by destination).
    pub fn from_neighbors<const K: usize>(
        coords: GraphTensor<(N, Const<3>)>,
        neighbors: &crate::ops::Neighbors<N, K>,
        edge_features: Option<GraphTensor<(E, X)>>,
    ) -> EdgeGraph {
        let e = neighbors.edges::<E>();
        EdgeGraph::new(coords, e.src, e.dst, Some(e.valid), edge_features).grouped(K)
    }

    /// Declares that the edges are grouped by destination with `k` per node (edge `i k + kk`
    /// has `dst = i` or `-1`); `k` may be a dynamic dimension such as `'k'`.
    pub fn grouped(mut self, k: impl Into<Expression>) -> EdgeGraph {
        self.per_node = Some(k.into());
        self
    }

    /// Edge inputs `<name>.src`, `<name>.dst` (indices into the nodes, `-1` allowed) declared on
    /// `s`, and the edge dimension `e` taken from them.
    pub fn input(s: &mut Session, name: &str, coords: GraphTensor<(N, Const<3>)>) -> EdgeGraph {
        let kind = crate::exec::InputKind::Indices {
            bound: crate::exec::IndexBound::Dim('n'),
            allow_missing: true,
        };
        let src = s.input::<(E,)>(&format!("{name}.src"), kind);
        let dst = s.input::<(E,)>(&format!("{name}.dst"), kind);
        EdgeGraph::new(coords, src, dst, None, None)
    }

    /// Per-edge weights of a mean over each destination's valid edges: `1 / count(dst)`
    /// (0 for missing and invalid edges). A node without valid edges gets no contribution (its mean is 0).
    pub fn mean_weights(&self) -> GraphTensor<(E,)> {
        let e = dims(self.valid)[0];
        let v2: GraphTensor<(E, X)> = reshape(self.valid, &[e, 1.into()]);
        let cnt: GraphTensor<(N, X)> = scatter_add::<N, X, E>(v2, self.dst);
        let inv = cnt.max(full_like(cnt, 1.0)).recip();
        let w: GraphTensor<(E, X)> = gather(inv, self.dst);
        // an invalid edge may still have a destination (the EGNN trunk keeps them)
        reshape::<_, (E,)>(w, &[e]) * self.valid
    }

    /// The radial network's input per edge: `[|r|, edge features]`, or with `fourier = Some(K)`
    /// `[sin(|r| / 2^k) (k < K), cos(|r| / 2^k) (k < K), |r|, edge features]`
    /// (`crate::basis::fourier_encode` order).
    ///
    /// # Errors
    /// Those of `Session::set_weight` (for the Fourier scale table).
    pub fn radial_input(
        &self,
        s: &mut Session,
        fourier: Option<usize>,
    ) -> Result<GraphTensor<(E, X)>, Error> {
        radial_features(s, self.dist, self.edge_features, fourier)
    }
}

/// The radial network's input per edge from the distances `dist (E,)` and optional features
/// `(E, d)`: `[|r|, edge features]`, or with `fourier = Some(K)`
/// `[sin(|r| / 2^k) (k < K), cos(|r| / 2^k) (k < K), |r|, edge features]`
/// (`crate::basis::fourier_encode` order). [`EdgeGraph::radial_input`] on given distances.
///
/// # Errors
/// Those of `Session::set_weight` (for the Fourier scale table).
pub fn radial_features(
    s: &mut Session,
    dist: GraphTensor<(E,)>,
    edge_features: Option<GraphTensor<(E, X)>>,
    fourier: Option<usize>,
) -> Result<GraphTensor<(E, X)>, Error> {
    let e = dims(dist)[0];
    let d: GraphTensor<(E, X)> = reshape(dist, &[e, 1.into()]);
    let mut cols: Vec<GraphTensor<(E, X)>> = Vec::new();
    if let Some(k) = fourier.filter(|&k| k > 0) {
        let scales: Vec<f32> = (0..k).map(|i| 1.0 / (1u64 << i) as f32).collect();
        // one weight per call (several layers read the same edges; a name declared twice
        // would leave the first declaration without a value)
        let name = format!(
            "fourier_scales.{k}.{}.{}",
            dist.id.index(),
            s.weights().len()
        );
        let sc: GraphTensor<(X,)> = constant(s, &name, scales, &[k])?;
        let de: GraphTensor<(E, X)> = expand_at(dist, 1, k);
        let scaled = de * expand_at::<_, (E, X)>(sc, 0, e);
        cols.push(scaled.sin());
        cols.push(scaled.cos());
    }
    cols.push(d);
    if let Some(f) = edge_features {
        cols.push(f);
    }
    Ok(concat_columns(&cols))
}

/// Concatenates `(E, c_i)` tensors along axis 1.
pub(crate) fn concat_columns(cols: &[GraphTensor<(E, X)>]) -> GraphTensor<(E, X)> {
    let widths: Vec<Expression> = cols.iter().map(|c| dims(*c)[1]).collect();
    if cols.len() == 1 {
        return cols[0];
    }
    let total = widths.iter().fold(Expression::from(0), |a, b| a + *b);
    let mut before = Expression::from(0);
    let mut acc: Option<GraphTensor<(E, X)>> = None;
    for (c, w) in cols.iter().zip(&widths) {
        let c = if super::graph::is_plain(&c.shape) {
            *c
        } else {
            c.contiguous()
        };
        let after = total - before - *w;
        let p: GraphTensor<(E, X)> =
            c.pad(&[(Expression::from(0), Expression::from(0)), (before, after)]);
        before = before + *w;
        acc = Some(match acc {
            None => p,
            Some(a) => super::graph::add_views(a, p),
        });
    }
    acc.unwrap_or(cols[0])
}

/// The kernel basis of every pair of degrees up to `max_degree` on the edges, as graph
/// tensors: for pair `(d_in, d_out)` a tensor `(E, 2 d_in + 1, nf (2 d_out + 1))` with
/// `[e, i, f (2 d_out + 1) + o] = K_f(rel_e)[o, i]` (se3-transformer-pytorch's `get_basis`,
/// `crate::basis::KernelBasis`, Q_J rounded to f32 like the library, laid out for the
/// message contraction).
///
/// Built as graph operations: the unit direction `u = rel / |rel|` (a zero-length edge takes
/// the direction `(0, 1, 0)`, as the library), the monomials `u0^a u1^b u2^c` with
/// `a, b, c <= 2 max_degree` as an outer product of powers, and one GEMM per pair with a
/// constant matrix (harmonic polynomial coefficients times Q_J, composed in f64).
#[derive(Debug, Clone)]
pub struct EdgeBasis {
    max_degree: usize,
    blocks: Vec<GraphTensor<(E, X, X)>>,
}

impl EdgeBasis {
    /// The basis on `edges` up to `max_degree`; constants are weights named
    /// `<prefix>basis.<d_in>.<d_out>`.
    ///
    /// # Errors
    /// `DegreeTooHigh` beyond the harmonics of se3-core.
    pub fn new(
        s: &mut Session,
        prefix: &str,
        edges: &EdgeGraph,
        max_degree: usize,
    ) -> Result<EdgeBasis, Error> {
        EdgeBasis::from_geometry(s, prefix, edges.rel, edges.dist, max_degree, &[])
    }

    /// The basis at relative positions `rel (E, 3)` with lengths `dist = |rel|` (`(E,)`), up
    /// to `max_degree`, with the Q_J of every `(J, d_in, d_out)` listed in `sign_flips`
    /// negated relative to se3-core's ([`crate::basis::q_j`], whose signs are those of the
    /// reference data; Q_J is an SVD null vector, so another LAPACK build may return `-Q_J`).
    /// A flip negates frequency `f = J - |d_in - d_out|` of block `(d_in, d_out)`; triples
    /// outside `0..=max_degree` or with `J` out of range are ignored. Constants are weights
    /// named `<prefix>basis.<d_in>.<d_out>`.
    ///
    /// # Errors
    /// `DegreeTooHigh` beyond the harmonics of se3-core.
    pub fn from_geometry(
        s: &mut Session,
        prefix: &str,
        rel: GraphTensor<(E, Const<3>)>,
        dist: GraphTensor<(E,)>,
        max_degree: usize,
        sign_flips: &[(usize, usize, usize)],
    ) -> Result<EdgeBasis, Error> {
        let dmax = 2 * max_degree;
        let p = dmax + 1;
        let e = dims(dist)[0];
        // Unit direction, (0, 1, 0) for zero-length edges.
        let d = dist;
        let zero = d.less_than(full_like(d, 1e-30));
        let inv = d.max(full_like(d, 1e-30)).recip() * (-zero + 1.0);
        let rel: GraphTensor<(E, X)> = retype(rel);
        let u = rel * expand_at::<_, (E, X)>(inv, 1, 3);
        let ey: GraphTensor<(X,)> = constant(
            s,
            &format!("{prefix}basis.axis_y"),
            vec![0.0, 1.0, 0.0],
            &[3],
        )?;
        let u = u + expand_at::<_, (E, X)>(zero, 1, 3) * expand_at::<_, (E, X)>(ey, 0, e);
        // Powers 0..=dmax of each component, stacked to (E, p).
        let mut powers = Vec::new();
        for a in 0..3 {
            let mut sel = vec![0.0; 3];
            sel[a] = 1.0;
            let st: GraphTensor<(X,)> =
                constant(s, &format!("{prefix}basis.select.{a}"), sel, &[3])?;
            let comp: GraphTensor<(E,)> =
                (u * expand_at::<_, (E, X)>(st, 0, e)).sum_reduce::<(E,), _>();
            let mut cols: Vec<GraphTensor<(E, X)>> =
                vec![reshape(full_like(comp, 1.0), &[e, 1.into()])];
            let mut cur = comp;
            for k in 1..=dmax {
                if k > 1 {
                    cur *= comp;
                }
                cols.push(reshape(cur, &[e, 1.into()]));
            }
            powers.push(concat_columns(&cols));
        }
        // Monomials (E, p, p, p) -> (E, p^3), index (a p + b) p + c.
        let px: GraphTensor<(E, X, X, X)> =
            expand_at(expand_at::<_, (E, X, X)>(powers[0], 2, p), 3, p);
        let py: GraphTensor<(E, X, X, X)> =
            expand_at(expand_at::<_, (E, X, X)>(powers[1], 1, p), 3, p);
        let pz: GraphTensor<(E, X, X, X)> =
            expand_at(expand_at::<_, (E, X, X)>(powers[2], 1, p), 2, p);
        let mono: GraphTensor<(X, X)> = reshape(px * py * pz, &[e, (p * p * p).into()]);
        let mut blocks = Vec::new();
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let table = basis_table(d_in, d_out, p, sign_flips)?;
                let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
                let c: GraphTensor<(X, X)> = constant(
                    s,
                    &format!("{prefix}basis.{d_in}.{d_out}"),
                    table,
                    &[p * p * p, mi * nf * mo],
                )?;
                let k = mm(mono, c);
                blocks.push(reshape(k, &[e, mi.into(), (nf * mo).into()]));
            }
        }
        Ok(EdgeBasis { max_degree, blocks })
    }

    /// The largest degree.
    pub fn max_degree(&self) -> usize {
        self.max_degree
    }

    /// The block of pair `(d_in, d_out)`: `(E, 2 d_in + 1, nf (2 d_out + 1))`.
    ///
    /// # Errors
    /// `DegreeTooHigh` above `max_degree`.
    pub fn block(&self, d_in: usize, d_out: usize) -> Result<GraphTensor<(E, X, X)>, Error> {
        let l = d_in.max(d_out);
        if l > self.max_degree {
            return Err(Error::DegreeTooHigh {
                l,
                max: self.max_degree,
            });
        }
        Ok(self.blocks[d_in * (self.max_degree + 1) + d_out])
    }
}

/// The constant `(p^3, mi nf mo)` matrix from monomials to the pair's basis block.
pub(crate) fn basis_table(
    d_in: usize,
    d_out: usize,
    p: usize,
    sign_flips: &[(usize, usize, usize)],
) -> Result<Vec<f32>, Error> {
    let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
    let cols = mi * nf * mo;
    let mut t = vec![0.0f64; p * p * p * cols];
    for f in 0..nf {
        let j = d_in.abs_diff(d_out) + f;
        let q = q_j(j, d_in, d_out, QjPrecision::RoundedF32)?;
        let sign = if sign_flips.contains(&(j, d_in, d_out)) {
            -1.0
        } else {
            1.0
        };
        for m in 0..(2 * j + 1) {
            let poly = sh_polynomial(
                j,
                m as i64 - j as i64,
                Convention::Se3TransformerPytorch,
                Normalization::Integral,
            )?;
            for o in 0..mo {
                for i in 0..mi {
                    let qv = q[(o * mi + i, m)];
                    if qv == 0.0 {
                        continue;
                    }
                    let col = i * nf * mo + f * mo + o;
                    for term in &poly {
                        let [a, b, c] = term.powers;
                        let row = (a as usize * p + b as usize) * p + c as usize;
                        t[row * cols + col] += sign * qv * term.coefficient;
                    }
                }
            }
        }
    }
    Ok(t.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::basis::KernelBasis;
    use crate::exec::InputKind;
    use crate::testing::rng;

    #[test]
    fn graph_basis_matches_kernel_basis_including_zero_length_edges() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let max_degree = 2;
        let n = 6;
        let mut pts: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
        pts.copy_within(0..3, 3); // points 0 and 1 coincide
        let (mut src, mut dst) = (vec![], vec![]);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    src.push(j as f32);
                    dst.push(i as f32);
                }
            }
        }
        let mut s = Session::new();
        let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
        let edges = EdgeGraph::input(&mut s, "edges", coords);
        let basis = EdgeBasis::new(&mut s, "", &edges, max_degree)?;
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                s.output(&format!("b{d_in}{d_out}"), basis.block(d_in, d_out)?);
            }
        }
        let e = src.len();
        s.set("coords", pts.clone(), &[n, 3])?;
        s.set("edges.src", src.clone(), &[e])?;
        s.set("edges.dst", dst.clone(), &[e])?;
        s.run()?;
        let rel: Vec<[f64; 3]> = (0..e)
            .map(|k| {
                let (i, j) = (dst[k] as usize, src[k] as usize);
                [0, 1, 2].map(|a| f64::from(pts[i * 3 + a]) - f64::from(pts[j * 3 + a]))
            })
            .collect();
        let want = KernelBasis::new(max_degree, QjPrecision::RoundedF32)?.compute(&rel)?;
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let got = s.get(&format!("b{d_in}{d_out}"))?.data;
                let w = want.block(d_in, d_out)?;
                let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
                for k in 0..e {
                    for o in 0..mo {
                        for i in 0..mi {
                            for f in 0..nf {
                                let a = f64::from(got[((k * mi + i) * nf + f) * mo + o]);
                                let b = w[((k * mo + o) * mi + i) * nf + f];
                                assert!(
                                    (a - b).abs() < 1e-5,
                                    "seed {seed}: pair ({d_in},{d_out}) edge {k} [{o},{i},{f}]: {a} vs {b}"
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_sign_flip_negates_exactly_that_frequency_of_the_graph_basis() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let max_degree = 2;
        let e = 5;
        let rel: Vec<f32> = (0..e * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
        let flips = [(2, 1, 1), (1, 0, 1)];
        let mut s = Session::new();
        let rel_t = s.input::<(E, Const<3>)>("rel", InputKind::Values);
        let dist = crate::ops::distances(rel_t);
        let plain = EdgeBasis::from_geometry(&mut s, "a.", rel_t, dist, max_degree, &[])?;
        let flipped = EdgeBasis::from_geometry(&mut s, "b.", rel_t, dist, max_degree, &flips)?;
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                s.output(&format!("a{d_in}{d_out}"), plain.block(d_in, d_out)?);
                s.output(&format!("b{d_in}{d_out}"), flipped.block(d_in, d_out)?);
            }
        }
        s.set("rel", rel, &[e, 3])?;
        s.run()?;
        let mut negated = 0;
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let a = s.get(&format!("a{d_in}{d_out}"))?.data;
                let b = s.get(&format!("b{d_in}{d_out}"))?.data;
                let (mo, nf) = (2 * d_out + 1, 2 * d_in.min(d_out) + 1);
                for (idx, (x, y)) in a.iter().zip(&b).enumerate() {
                    let f = (idx / mo) % nf;
                    let j = d_in.abs_diff(d_out) + f;
                    let want = if flips.contains(&(j, d_in, d_out)) {
                        negated += 1;
                        -x
                    } else {
                        *x
                    };
                    assert_eq!(*y, want, "seed {seed}: pair ({d_in},{d_out}) entry {idx}");
                }
            }
        }
        assert!(negated > 0, "no entry was flipped");
        Ok(())
    }
}
