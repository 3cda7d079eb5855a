//! Equiformer's depthwise tensor product (`DTP`) on edge-aligned frames, and the edge inputs it
//! runs on ([`AlignedEdges`]).

use luminal::prelude::{symbolic::Expression, *};

use super::equiformer_radial::EquiformerRadial;
use super::graph::{
    add_views, bmm, bmm_shared, constant, dims, expand_at, is_plain, permute, reshape, retype,
    FeatureTensors, ParamSource, X,
};
use super::linear::{LinearLayer, LinearLayout};
use crate::exec::{IndexBound, InputKind, Session};
use crate::fiber::FiberSpec;
use crate::ops::{gather3, table_contract};
use crate::Error;

/// The edges of an equiformer graph: every node row `i` has exactly `k` neighbour slots
/// (edge `e = i k + j`), chosen on the host, with per-edge frames.
///
/// Inputs (named `<name>.<field>`): `src (E,)` the neighbour row, `dst (E,)` the node row,
/// `mask (E,)` the neighbour mask (0/1), `mean (E,)` the pooling weight
/// `mask / max(sum_j mask, 1)`, `dist (E, 1)` the distance `|x_i - x_j|`, `frame.<l> (E, 2l+1,
/// 2l+1)` for `l = 1..=L` the matrix `D^l(R_e)` of the rotation that takes the edge direction
/// `(x_i - x_j)/|x_i - x_j|` to `(0, 1, 0)` (`so3::equiformer_edge_wigner_d`).
///
/// From them and the z-basis of every degree pair it builds the pair kernels
/// `K^(li,lo)_e = D^li_e C^(li,lo) (D^lo_e)^T` (`(E, 2li+1, 2lo+1)`; `D^0 = 1`), where `C`
/// embeds the library's z-aligned map: with `B` the z-basis `(2d+1, 2d+1)`, `d = min(li, lo)`,
/// `P[m, m] += sum_{f even} B[m, f]`, `P[2d - m, m] += sum_{f odd} B[m, f]` (`P = 1` if `d = 0`),
/// placed at the centred rows / columns. A feature row `x (2li+1)` maps to `x K` in the output
/// degree's basis: rotate to the edge frame (`D^T x`), keep the centred `2d+1` orders, apply
/// `P`, pad and rotate back (`D out`), as equiformer-pytorch's `DTP`.
///
/// The layers on these edges may contract radial networks' last layers with node features
/// first (`ops::table_contract`, see [`DepthwiseTensorProductLayer`]) and run the radial
/// networks' hidden layers as fused row kernels (`ops::silu_layer_norm`); those ops have no
/// gradient, so a graph that is differentiated uses
/// [`AlignedEdges::with_per_edge_radial_weights`].
#[derive(Debug, Clone)]
pub struct AlignedEdges {
    nodes: usize,
    k: usize,
    src: GraphTensor<(X,)>,
    dst: GraphTensor<(X,)>,
    mask: GraphTensor<(X,)>,
    mean: GraphTensor<(X,)>,
    dist: GraphTensor<(X, X)>,
    radial_in: GraphTensor<(X, X)>,
    kernels: Vec<PairKernel>,
    per_node_tables: bool,
}

/// Node features of one input degree: `(W^xi x, W^xj x)`, each `(n, c_in, 2li+1)`.
type NodeHalves = (GraphTensor<(X, X, X)>, GraphTensor<(X, X, X)>);

/// The kernel `K^(li,lo)` of a degree pair on every edge, `(E, 2li+1, 2lo+1)`.
type PairKernel = ((usize, usize), GraphTensor<(X, X, X)>);

/// The z-basis `B` of a degree pair `(d_in, d_out)` with `min > 0`: `(2d+1, 2d+1)` row-major
/// (rows: order m, columns: frequency f), as `equiformer_pytorch.basis.get_basis`.
#[derive(Debug, Clone, PartialEq)]
pub struct ZBasis {
    /// Input degree.
    pub d_in: usize,
    /// Output degree.
    pub d_out: usize,
    /// Values.
    pub values: Vec<f32>,
}

impl AlignedEdges {
    /// Declares the edge inputs for `nodes` rows with `k` neighbours each and builds the pair
    /// kernels up to `max_degree` from `zbasis` (one per pair with both degrees > 0).
    ///
    /// # Errors
    /// `NotTabulated` if `zbasis` lacks a pair, `ShapeMismatch` for a basis of the wrong size.
    pub fn input(
        s: &mut Session,
        name: &str,
        nodes: usize,
        k: usize,
        max_degree: usize,
        zbasis: &[ZBasis],
    ) -> Result<Self, Error> {
        let e = Expression::from(nodes * k);
        let idx = |s: &mut Session, f: &str| {
            s.input_with_shape::<(X,)>(
                &format!("{name}.{f}"),
                InputKind::Indices {
                    bound: IndexBound::Fixed(nodes),
                    allow_missing: false,
                },
                &[e],
            )
        };
        let src = idx(s, "src");
        let dst = idx(s, "dst");
        let mask = s.input_with_shape::<(X,)>(&format!("{name}.mask"), InputKind::Mask, &[e]);
        let mean = s.input_with_shape::<(X,)>(&format!("{name}.mean"), InputKind::Values, &[e]);
        let dist = s.input_with_shape::<(X, X)>(
            &format!("{name}.dist"),
            InputKind::Values,
            &[e, 1.into()],
        );
        let mut frames = vec![None];
        for l in 1..=max_degree {
            let m = Expression::from(2 * l + 1);
            frames.push(Some(s.input_with_shape::<(X, X, X)>(
                &format!("{name}.frame.{l}"),
                InputKind::Values,
                &[e, m, m],
            )));
        }
        let mut kernels = Vec::new();
        for li in 0..=max_degree {
            for lo in 0..=max_degree {
                let c = pair_map(li, lo, zbasis)?;
                let (mi, mo) = (2 * li + 1, 2 * lo + 1);
                let ct: GraphTensor<(X, X)> =
                    constant(s, &format!("{name}.zkernel.{li}.{lo}"), c, &[mi, mo])?;
                let a: GraphTensor<(X, X, X)> = match frames[li] {
                    Some(d) => bmm_shared(d, ct),
                    None => expand_at(ct, 0, e),
                };
                let kern = match frames[lo] {
                    Some(d) => bmm(a, permute(d, &[0, 2, 1])),
                    None => a,
                };
                kernels.push(((li, lo), kern));
            }
        }
        Ok(AlignedEdges {
            nodes,
            k,
            src,
            dst,
            mask,
            mean,
            dist,
            radial_in: dist,
            kernels,
            per_node_tables: true,
        })
    }

    /// Uses `[features, dist]` (`(E, F + 1)`) as the radial networks' input (edge embeddings
    /// first, as the library's `safe_cat(edges, rel_dist)`).
    pub fn with_edge_features(mut self, features: GraphTensor<(X, X)>) -> Self {
        self.radial_in = concat_axis1::<(X, X)>(&[features, self.dist]);
        self
    }

    /// Makes the layers on these edges form every radial network's per-edge weights `R_e`
    /// (luminal primitives only, differentiable) instead of contracting node tables, with the
    /// unfused hidden layers.
    pub fn with_per_edge_radial_weights(mut self) -> Self {
        self.per_node_tables = false;
        self
    }

    /// Node rows.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Neighbour slots per node.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The neighbour mask `(E,)`.
    pub fn mask(&self) -> GraphTensor<(X,)> {
        self.mask
    }

    /// The node row of every edge `(E,)`.
    pub fn dst(&self) -> GraphTensor<(X,)> {
        self.dst
    }

    fn kernel(&self, li: usize, lo: usize) -> Option<GraphTensor<(X, X, X)>> {
        self.kernels
            .iter()
            .find(|(p, _)| *p == (li, lo))
            .map(|(_, t)| *t)
    }
}

/// The constant `C^(li,lo)` of [`AlignedEdges`], `(2li+1, 2lo+1)` row-major.
fn pair_map(li: usize, lo: usize, zbasis: &[ZBasis]) -> Result<Vec<f32>, Error> {
    let d = li.min(lo);
    let (mi, mo, mm_) = (2 * li + 1, 2 * lo + 1, 2 * d + 1);
    let (pi, po) = ((mi - mm_) / 2, (mo - mm_) / 2);
    let mut p = vec![0.0f32; mm_ * mm_];
    if d == 0 {
        p[0] = 1.0;
    } else {
        let b = zbasis
            .iter()
            .find(|z| z.d_in == li && z.d_out == lo)
            .ok_or(Error::NotTabulated {
                what: "equiformer z-basis",
                degrees: vec![li, lo],
            })?;
        if b.values.len() != mm_ * mm_ {
            return Err(Error::ShapeMismatch {
                what: format!("z-basis of pair ({li}, {lo})"),
                expected: vec![mm_, mm_],
                found: vec![b.values.len()],
            });
        }
        for m in 0..mm_ {
            for f in 0..mm_ {
                let v = b.values[m * mm_ + f];
                let row = if f % 2 == 0 { m } else { mm_ - 1 - m };
                p[row * mm_ + m] += v;
            }
        }
    }
    let mut c = vec![0.0f32; mi * mo];
    for r in 0..mm_ {
        for q in 0..mm_ {
            c[(pi + r) * mo + po + q] = p[r * mm_ + q];
        }
    }
    Ok(c)
}

/// Concatenates tensors along axis 1 (other axes equal), e.g. edge feature columns.
pub fn concat_axis1<S: Shape>(parts: &[GraphTensor<S>]) -> GraphTensor<S> {
    if parts.len() == 1 {
        return parts[0];
    }
    let widths: Vec<Expression> = parts.iter().map(|c| dims(*c)[1]).collect();
    let total = widths.iter().fold(Expression::from(0), |a, b| a + *b);
    let mut before = Expression::from(0);
    let mut acc: Option<GraphTensor<S>> = None;
    for (c, w) in parts.iter().zip(&widths) {
        let c = if is_plain(&c.shape) {
            *c
        } else {
            c.contiguous()
        };
        let rank = dims(c).len();
        let mut pads = vec![(Expression::from(0), Expression::from(0)); rank];
        pads[1] = (before, total - before - *w);
        let p: GraphTensor<S> = c.pad(&pads);
        before = before + *w;
        acc = Some(match acc {
            None => p,
            Some(a) => add_views(a, p),
        });
    }
    acc.unwrap_or(parts[0])
}

/// The message `R_e x_e K_e` of one degree pair on every edge (`R (E, c_out, c_in)`,
/// `x (E, c_in, 2li+1)`, `K (E, 2li+1, 2lo+1)`), associated in the cheaper order by
/// multiply-adds: `R (x K)` costs `c_in mi mo + c_out c_in mo` per edge, `(R x) K` costs
/// `c_out c_in mi + c_out mi mo` (cheaper when `li < lo`: a degree-0 input meets the channel
/// mixing before it is spread over the output orders).
fn radial_kernel_product(
    r: GraphTensor<(X, X, X)>,
    x: GraphTensor<(X, X, X)>,
    kern: GraphTensor<(X, X, X)>,
) -> GraphTensor<(X, X, X)> {
    let (dr, dk) = (dims(r), dims(kern));
    let size = |e: Expression| e.to_usize().unwrap_or(1);
    let (co, ci, mi, mo) = (size(dr[1]), size(dr[2]), size(dk[1]), size(dk[2]));
    if co * ci * mi + co * mi * mo < ci * mi * mo + co * ci * mo {
        bmm(bmm(r, x), kern)
    } else {
        bmm(r, bmm(x, kern))
    }
}

/// Whether contracting the radial network's last layer with node tables (`ops::table_contract`)
/// takes fewer multiply-adds than forming the per-edge weights, for `nodes` nodes, `edges`
/// edges, `k = hidden + 1`, `c_out x c_in` weights and input orders `mi`:
/// tables `2 nodes mi c_in k c_out` (one for the neighbour half `W^xj x`, one for the own half
/// `W^xi x`) plus `2 edges k c_out mi` on the edges, against `edges (k c_out c_in + c_out c_in
/// mi)` for `R_e` and `R_e x_e`.
fn tables_are_cheaper(
    nodes: usize,
    edges: usize,
    k: usize,
    co: usize,
    ci: usize,
    mi: usize,
) -> bool {
    let tables = 2 * nodes * mi * ci * k * co + 2 * edges * k * co * mi;
    let per_edge = edges * (k * co * ci + co * ci * mi);
    tables < per_edge
}

/// `sum_c R_e[o, c] x_e[c, m]` for `x_e = b_(src e) + a_(dst e)` (`a`, `b`: node features
/// `(n, c_in, mi)`) without forming `R_e = [h_e, 1] [W_3, b_3]^T`: per-node tables
/// `T_j[m, k, o] = sum_c [W_3, b_3][(o, c), k] x_j[c, m]` contracted with each edge's
/// `[h_e, 1]` (`ops::table_contract`, which forms each table in cache); `(E, c_out, mi)`.
fn radial_times_features(
    h1: GraphTensor<(X, X)>,
    w3b: GraphTensor<(X, X)>,
    (co, ci): (usize, usize),
    a: GraphTensor<(X, X, X)>,
    b: GraphTensor<(X, X, X)>,
    edges: &AlignedEdges,
) -> Result<GraphTensor<(X, X, X)>, Error> {
    let k = dims(h1)[1];
    let w: GraphTensor<(X, X, X)> = reshape(w3b, &[co.into(), ci.into(), k]);
    let wc: GraphTensor<(X, X)> = reshape(permute(w, &[1, 2, 0]), &[ci.into(), k * co]);
    table_contract(h1, wc, &[(b, edges.src), (a, edges.dst)]).ok_or(Error::Empty {
        what: "node tables of a depthwise tensor product",
    })
}

/// Options of a [`DepthwiseTensorProductLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtpOptions {
    /// Masked mean over the neighbours (`pool = True`) or one output per neighbour slot.
    pub pool: bool,
    /// A self-interaction `Linear(fiber_in, fiber_out)` (residual when pooled, the first slot of
    /// every node when not).
    pub self_interaction: bool,
    /// Width of the edge features before the distance.
    pub edge_dim: usize,
    /// Hidden width of the radial networks.
    pub radial_hidden: usize,
}

#[derive(Debug, Clone)]
struct PairPath {
    li: usize,
    lo: usize,
    radial: Option<EquiformerRadial>,
}

/// equiformer-pytorch's `DTP(fiber_in, fiber_out, ...)` with `project_xi_xj` and `project_out`:
///
/// for every edge `e = (i, j)` and degrees `li -> lo`,
/// `msg_lo[e] = concat_li R^(li,lo)_e (x_li[e] K^(li,lo)_e)`, `x_li[e] = W^xj x_j + W^xi x_i`,
/// where output degree `lo`'s channels are split over the input degrees (`ceil` groups first,
/// as `split_num_into_groups`) and `R` is an [`EquiformerRadial`] `(c_part, c_in)`;
/// then `to_out` (per-degree linear). Pooled: `out = mean_j mask_ij msg + self_interact(x)`;
/// otherwise the slots of node `i` are `[self_interact(x)_i, msg_(i, j_1), ..]` (rows
/// `i (k + 1) + slot`). Keys as the library: `to_xi.`, `to_xj.`, `kernel_unary.(li,lo).rp.*`,
/// `self_interact.`, `to_out.`.
///
/// A degree pair's `R x_li` is computed in the cheaper of two forms (multiply-adds, from the
/// sizes at graph build): per-edge weights `R_e` (`E (hidden + 1) c_out c_in`), or, since the
/// radial network's last layer is linear and the channel mixing commutes with the edge kernel
/// (which acts on the orders), per-node tables `T_j = [W_3, b_3] x_j` contracted with each
/// edge's hidden units (`2 n mi c_in (hidden + 1) c_out + 2 E (hidden + 1) c_out mi`): at
/// degrees 0-1 with 64 hidden units and 16 neighbours about 3x fewer. Edges made with
/// [`AlignedEdges::with_per_edge_radial_weights`] always form `R_e` (the differentiable form).
///
/// Equivariant: `K_e` intertwines `D^li(R)` and `D^lo(R)` for a rotation of the cloud (the
/// edge-frame rotation only changes by a rotation about `(0, 1, 0)`, which `P` commutes with).
#[derive(Debug, Clone)]
pub struct DepthwiseTensorProductLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    to_xi: LinearLayer,
    to_xj: LinearLayer,
    pairs: Vec<PairPath>,
    self_interact: Option<LinearLayer>,
    to_out: LinearLayer,
    opts: DtpOptions,
}

/// `split_num_into_groups(num, groups)` of equiformer-pytorch: `num` channels over `groups`
/// input degrees, the larger groups first.
pub fn split_into_groups(num: usize, groups: usize) -> Vec<usize> {
    let per = num.div_ceil(groups.max(1));
    let rem = num % groups.max(1);
    if rem == 0 {
        return vec![per; groups];
    }
    (0..groups)
        .map(|g| if g < rem { per } else { per - 1 })
        .collect()
}

impl DepthwiseTensorProductLayer {
    /// Loads the layer stored under `prefix`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        opts: DtpOptions,
    ) -> Result<Self, Error> {
        let lin = |src: &mut dyn ParamSource, name: &str, a: &FiberSpec, b: &FiberSpec| {
            LinearLayer::load(
                src,
                &format!("{prefix}{name}."),
                a,
                b,
                LinearLayout::Se3TransformerPytorch,
                false,
            )
        };
        let to_xi = lin(src, "to_xi", fiber_in, fiber_in)?;
        let to_xj = lin(src, "to_xj", fiber_in, fiber_in)?;
        let mut pairs = Vec::new();
        let n_in = fiber_in.degrees().len();
        for dout in fiber_out.degrees() {
            let split = split_into_groups(dout.channels, n_in);
            for (din, &part) in fiber_in.degrees().iter().zip(&split) {
                let radial = EquiformerRadial::load(
                    src,
                    &format!("{prefix}kernel_unary.({},{}).", din.l, dout.l),
                    opts.edge_dim + 1,
                    opts.radial_hidden,
                    din.channels,
                    part,
                )?;
                pairs.push(PairPath {
                    li: din.l,
                    lo: dout.l,
                    radial: (part > 0).then_some(radial),
                });
            }
        }
        let self_interact = if opts.self_interaction {
            Some(lin(src, "self_interact", fiber_in, fiber_out)?)
        } else {
            None
        };
        let to_out = lin(src, "to_out", fiber_out, fiber_out)?;
        Ok(DepthwiseTensorProductLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: fiber_out.clone(),
            to_xi,
            to_xj,
            pairs,
            self_interact,
            to_out,
            opts,
        })
    }

    /// The output fiber.
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.fiber_out
    }

    /// The layer on node features `x` (rows `edges.nodes()`): pooled node features, or the
    /// `nodes (k + 1)` slots (see the type's doc).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not of the input fiber; `NotTabulated` if the edges lack a
    /// kernel of a degree pair; `Empty` for a non-pooled layer without self-interaction.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
        edges: &AlignedEdges,
    ) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber_in, "depthwise tensor product input")?;
        let xi = self.to_xi.build(s, &format!("{prefix}to_xi."), x)?;
        let xj = self.to_xj.build(s, &format!("{prefix}to_xj."), x)?;
        // per input degree: node features (own half, neighbour half) and, once needed, the
        // per-edge sum `x_e = W^xj x_(src e) + W^xi x_(dst e)`
        let halves: Vec<NodeHalves> = xi
            .tensors()
            .iter()
            .zip(xj.tensors())
            .map(|(a, b)| (retype(*a), retype(*b)))
            .collect();
        let mut per_in: Vec<Option<GraphTensor<(X, X, X)>>> = vec![None; halves.len()];
        let e = Expression::from(edges.nodes * edges.k);
        let mut msgs = Vec::new();
        for dout in self.fiber_out.degrees() {
            let mut parts = Vec::new();
            for p in self.pairs.iter().filter(|p| p.lo == dout.l) {
                let Some(radial) = &p.radial else { continue };
                let kern = edges.kernel(p.li, p.lo).ok_or(Error::NotTabulated {
                    what: "aligned-edge pair kernels",
                    degrees: vec![p.li, p.lo],
                })?;
                let li_pos = self
                    .fiber_in
                    .degrees()
                    .iter()
                    .position(|d| d.l == p.li)
                    .unwrap_or(0);
                let key = format!("{prefix}kernel_unary.({},{}).", p.li, p.lo);
                let (co, ci, mi) = (radial.c_out(), radial.c_in(), 2 * p.li + 1);
                let (n, ne, kh) = (edges.nodes, edges.nodes * edges.k, radial.hidden_width());
                let (a, b) = halves[li_pos];
                if edges.per_node_tables && tables_are_cheaper(n, ne, kh, co, ci, mi) {
                    // node tables are the inference form: the fused hidden layers too
                    let (h1, w3b) = radial.hidden_inference(s, &key, edges.radial_in)?;
                    let rx = radial_times_features(h1, w3b, (co, ci), a, b, edges)?;
                    parts.push(bmm(rx, kern));
                } else {
                    let x_e = *per_in[li_pos].get_or_insert_with(|| {
                        let nb: GraphTensor<(X, X, X)> = gather3(b, edges.src);
                        let own: GraphTensor<(X, X, X)> = gather3(a, edges.dst);
                        nb + own
                    });
                    let r = if edges.per_node_tables {
                        radial.build_inference(s, &key, edges.radial_in)?
                    } else {
                        radial.build(s, &key, edges.radial_in)?
                    };
                    parts.push(radial_kernel_product(r, x_e, kern));
                }
            }
            let msg: GraphTensor<(X, X, X)> = concat_axis1(&parts);
            msgs.push(retype(msg));
        }
        let msgs: FeatureTensors<R> = FeatureTensors::from_parts(self.fiber_out.clone(), msgs);
        let msgs = self.to_out.build(s, &format!("{prefix}to_out."), &msgs)?;
        let si = match &self.self_interact {
            Some(l) => Some(l.build(s, &format!("{prefix}self_interact."), x)?),
            None => None,
        };
        let (n, k) = (Expression::from(edges.nodes), Expression::from(edges.k));
        let mut out = Vec::new();
        for (d, t) in self.fiber_out.degrees().iter().zip(msgs.tensors()) {
            let t3: GraphTensor<(X, X, X)> = retype(*t);
            let cm = Expression::from(d.channels * d.width());
            if self.opts.pool {
                let w: GraphTensor<(X, X)> = expand_at(edges.mean, 1, cm);
                let flat: GraphTensor<(X, X)> = reshape(t3, &[e, cm]);
                let grouped: GraphTensor<(X, X, X)> = reshape(flat * w, &[n, k, cm]);
                let pooled: GraphTensor<(X, X)> = grouped.sum_reduce::<(X, X), Axis<1>>();
                let mut y: GraphTensor<(X, X, X)> =
                    reshape(pooled, &[n, d.channels.into(), d.width().into()]);
                if let Some(o) = si.as_ref().and_then(|si| si.degree(d.l)) {
                    y += retype::<_, (X, X, X)>(o);
                }
                out.push(retype(y));
            } else {
                let o = si
                    .as_ref()
                    .and_then(|si| si.degree(d.l))
                    .ok_or(Error::Empty {
                        what: "self-interaction of an unpooled depthwise tensor product",
                    })?;
                let own: GraphTensor<(X, X, X)> =
                    reshape(retype::<_, (X, X, X)>(o), &[n, 1.into(), cm]);
                let nb: GraphTensor<(X, X, X)> = reshape(t3, &[n, k, cm]);
                let slots = concat_axis1(&[own, nb]);
                let y: GraphTensor<(X, X, X)> =
                    reshape(slots, &[n * (k + 1), d.channels.into(), d.width().into()]);
                out.push(retype(y));
            }
        }
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), out))
    }
}

#[cfg(test)]
#[path = "depthwise_tp_tests.rs"]
mod tests;
