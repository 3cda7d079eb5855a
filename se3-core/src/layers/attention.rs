//! SE(3)-Transformer equivariant attention (se3-transformer-pytorch's `AttentionSE3`) and its
//! pre-norm residual blocks, as graph builders.

use std::marker::PhantomData;

use luminal::prelude::{symbolic::Expression, *};
use rand::Rng;

use super::conv::{ConvLayer, ConvOptions, ConvPath, GroupedPair, Pool};
use super::conv_grouped;
use super::edges::{EdgeBasis, EdgeGraph};
use super::graph::{
    channel_slice, dims, expand_at, permute, reshape, retype, FeatureTensors, GraphFeatures, Param,
    ParamSource, E, N, T1, T2, T3, T4, X,
};
use super::linear::{LinearLayer, LinearLayout};
use super::norm::{NormActivation, NormLayer, NormScale};
use super::slot_softmax::{slot_softmax, SlotLogits};
use crate::exec::Session;
use crate::fiber::{DegreeSpec, FeedsGraph, Fiber, FiberSpec};
use crate::ops::gather3;
use crate::Error;

/// Options of an attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionOptions {
    /// Number of heads.
    pub heads: usize,
    /// Channels per head and degree.
    pub dim_head: usize,
    /// Let every node attend to itself too (keys/values `to_self_k`, `to_self_v`).
    pub attend_self: bool,
    /// Width of edge features fed to the key/value convolutions' radial networks.
    pub edge_dim: usize,
    /// Fourier features of the distance for the radial networks.
    pub fourier: Option<usize>,
    /// Keys are the values (se3-transformer-pytorch's `tie_key_values`): one convolution
    /// `to_v` gives both, and there are no `to_k` weights.
    pub tie_key_values: bool,
    /// One key/value head shared by every query head (se3-transformer-pytorch's
    /// `one_headed_key_values`): `to_k`, `to_v`, `to_self_k`, `to_self_v` give `dim_head`
    /// channels per degree.
    pub one_headed_key_values: bool,
    /// A learned null key and value per degree (`null_keys.<l>`, `null_values.<l>`, shape
    /// `(heads, dim_head, 2l + 1)`, `(dim_head, 2l + 1)` with one key/value head) that every
    /// node attends to besides its neighbours (se3-transformer-pytorch's `use_null_kv`).
    pub use_null_kv: bool,
    /// Keys are a linear map of the neighbour's features, `k_e = to_k(x_src)` (a
    /// [`LinearLayer`], se3-transformer-pytorch's `linear_proj_keys`), instead of a
    /// convolution over the edge; not with `tie_key_values` (the library rejects the pair).
    pub linear_proj_keys: bool,
    /// Width of global tokens (se3-transformer-pytorch's `global_feats_dim`): degree 0 also
    /// attends to keys and values `to_global_k(g)`, `to_global_v(g)` of its cloud's tokens
    /// ([`EdgeGraph::global_features`]).
    pub global_feats_dim: Option<usize>,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            heads: 4,
            dim_head: 16,
            attend_self: true,
            edge_dim: 0,
            fourier: None,
            tie_key_values: false,
            one_headed_key_values: false,
            use_null_kv: false,
            linear_proj_keys: false,
            global_feats_dim: None,
        }
    }
}

/// Where an attention layer's keys come from.
#[derive(Debug, Clone)]
enum KeyProjection {
    /// `to_k`: an unpooled convolution, a key per edge.
    Conv(ConvLayer),
    /// `tie_key_values`: the value convolution's messages.
    Values,
    /// `linear_proj_keys`: `to_k` a linear map of the neighbour's features.
    Linear(LinearLayer),
}

/// Equivariant multi-head attention over each node's neighbourhood, per degree `l`:
///
/// - queries `q_i = to_q(x_i)` (a [`LinearLayer`]), keys `k_e` and values `v_e` per edge from
///   unpooled convolutions `to_k`, `to_v` ([`ConvLayer::messages`]; keys tied to the values, or
///   a linear map of the neighbour's features with `linear_proj_keys`); with `attend_self`,
///   the node's own `to_self_k(x_i)`, `to_self_v(x_i)` join its candidates, with
///   `use_null_kv` a learned null key and value, with `global_feats_dim` (degree 0) the
///   keys and values of the cloud's global tokens; with [`EdgeGraph::rotary`] degree-0
///   queries, self and neighbour keys and values are rotated ([`super::rotary`]);
/// - logits `a_e = sum_{c in head, m} q_i[c, m] k_e[c, m] / sqrt(dim_head)` (invariant: an
///   inner product of two degree-l features), softmax over the node's valid candidates
///   ([`slot_softmax`], shared with the compiled model);
/// - `out_i = to_out(sum_e a_e v_e)` (`to_out` only if `heads > 1` or the fiber's channels
///   differ from `dim_head`, as the library).
///
/// Keys as se3-transformer-pytorch (`to_q.weights.<l>`, `to_k.kernel_unary...`,
/// `to_v.kernel_unary...`, `to_self_k.weights.<l>`, `null_keys.<l>`, `to_out.weights.<l>`).
/// The edges must be grouped by destination ([`EdgeGraph::per_node`], e.g.
/// [`EdgeGraph::from_neighbors`]); missing edges take no part, invalid ones (`valid = 0`)
/// none either unless a node has no valid candidate at all, which then averages its invalid
/// neighbours uniformly as se3-transformer-pytorch does (so feed the selected but invalid
/// neighbours as edges with `valid = 0` for the library's semantics).
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    fiber: FiberSpec,
    options: AttentionOptions,
    to_q: LinearLayer,
    to_k: KeyProjection,
    to_v: ConvLayer,
    self_kv: Option<(LinearLayer, LinearLayer)>,
    /// Per degree of the fiber, in its order: `(null_keys.<l>, null_values.<l>)`.
    null_kv: Vec<(Param, Param)>,
    /// `(to_global_k, to_global_v)` from the global tokens to degree 0 of the keys and values.
    to_global: Option<(LinearLayer, LinearLayer)>,
    to_out: Option<LinearLayer>,
}

/// The fibers of the global keys' and values' maps: `0:global_feats_dim` to degree 0 of the
/// keys' fiber (`None` without global tokens or without degree 0).
fn global_fibers(
    kv: &FiberSpec,
    o: &AttentionOptions,
) -> Result<Option<(FiberSpec, FiberSpec)>, Error> {
    let (Some(g), Some(d0)) = (o.global_feats_dim, kv.degrees().iter().find(|d| d.l == 0)) else {
        return Ok(None);
    };
    let one = |c: usize| FiberSpec::new(vec![DegreeSpec::new(0, c, d0.parity)]);
    Ok(Some((one(g)?, one(d0.channels)?)))
}

fn hidden_fiber(fiber: &FiberSpec, c: usize) -> Result<FiberSpec, Error> {
    FiberSpec::new(
        fiber
            .degrees()
            .iter()
            .map(|d| DegreeSpec::new(d.l, c, d.parity))
            .collect(),
    )
}

/// The keys' and values' fiber: `heads * dim_head` channels per degree, `dim_head` with one
/// key/value head.
fn kv_fiber(fiber: &FiberSpec, o: &AttentionOptions) -> Result<FiberSpec, Error> {
    let heads = if o.one_headed_key_values { 1 } else { o.heads };
    hidden_fiber(fiber, heads * o.dim_head)
}

/// `InvalidParameter` for options the library rejects together.
fn check_options(o: &AttentionOptions) -> Result<(), Error> {
    if o.linear_proj_keys && o.tie_key_values {
        return Err(Error::InvalidParameter {
            what: "tie_key_values with linear_proj_keys",
            expected: "false (linear keys cannot be the values)",
            found: 1.0,
        });
    }
    Ok(())
}

fn projects_out(fiber: &FiberSpec, o: &AttentionOptions) -> bool {
    !(o.heads == 1 && fiber.degrees().iter().all(|d| d.channels == o.dim_head))
}

/// The checkpoint shape of a null key or value of degree `l`: `(heads, dim_head, 2l + 1)`,
/// `(dim_head, 2l + 1)` with one key/value head.
fn null_shape(l: usize, o: &AttentionOptions) -> Vec<usize> {
    if o.one_headed_key_values {
        vec![o.dim_head, 2 * l + 1]
    } else {
        vec![o.heads, o.dim_head, 2 * l + 1]
    }
}

impl AttentionLayer {
    /// A layer with fresh weights (null keys and values uniform in `[-1, 1]`).
    ///
    /// # Errors
    /// `ZeroChannels` for `heads * dim_head = 0`; `InvalidParameter` for
    /// `linear_proj_keys` with `tie_key_values`.
    pub fn new(
        fiber: &FiberSpec,
        options: AttentionOptions,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        check_options(&options)?;
        let hidden = hidden_fiber(fiber, options.heads * options.dim_head)?;
        let kv = kv_fiber(fiber, &options)?;
        let conv = ConvOptions {
            edge_dim: options.edge_dim,
            fourier: options.fourier,
            self_interaction: false,
            pool: Pool::Sum,
        };
        Ok(AttentionLayer {
            fiber: fiber.clone(),
            options,
            to_q: LinearLayer::new(fiber, &hidden, false, rng)?,
            to_k: if options.linear_proj_keys {
                KeyProjection::Linear(LinearLayer::new(fiber, &kv, false, rng)?)
            } else if options.tie_key_values {
                KeyProjection::Values
            } else {
                KeyProjection::Conv(ConvLayer::new(fiber, &kv, conv, rng)?)
            },
            to_v: ConvLayer::new(fiber, &kv, conv, rng)?,
            self_kv: if options.attend_self {
                Some((
                    LinearLayer::new(fiber, &kv, false, rng)?,
                    LinearLayer::new(fiber, &kv, false, rng)?,
                ))
            } else {
                None
            },
            null_kv: if options.use_null_kv {
                fiber
                    .degrees()
                    .iter()
                    .map(|d| {
                        let shape = null_shape(d.l, &options);
                        (
                            Param::uniform(format!("null_keys.{}", d.l), shape.clone(), 1.0, rng),
                            Param::uniform(format!("null_values.{}", d.l), shape, 1.0, rng),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            to_global: match global_fibers(&kv, &options)? {
                Some((gin, gout)) => Some((
                    LinearLayer::new(&gin, &gout, false, rng)?,
                    LinearLayer::new(&gin, &gout, false, rng)?,
                )),
                None => None,
            },
            to_out: if projects_out(fiber, &options) {
                Some(LinearLayer::new(&hidden, fiber, false, rng)?)
            } else {
                None
            },
        })
    }

    /// Loads an `AttentionSE3` checkpoint under `prefix` (e.g. `"net.0.0.attn."`).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`; `InvalidParameter` as
    /// [`AttentionLayer::new`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        options: AttentionOptions,
    ) -> Result<Self, Error> {
        check_options(&options)?;
        let hidden = hidden_fiber(fiber, options.heads * options.dim_head)?;
        let kv = kv_fiber(fiber, &options)?;
        let conv = ConvOptions {
            edge_dim: options.edge_dim,
            fourier: options.fourier,
            self_interaction: false,
            pool: Pool::Sum,
        };
        let se3t = LinearLayout::Se3TransformerPytorch;
        let lin = |src: &mut dyn ParamSource, name: &str, a: &FiberSpec, b: &FiberSpec| {
            LinearLayer::load(src, &format!("{prefix}{name}."), a, b, se3t, false)
        };
        let relative = |p: Param, key: String| Param { key, ..p };
        let to_q = lin(src, "to_q", fiber, &hidden)?;
        let to_v = ConvLayer::load(src, &format!("{prefix}to_v."), fiber, &kv, conv)?;
        let to_k = if options.linear_proj_keys {
            KeyProjection::Linear(lin(src, "to_k", fiber, &kv)?)
        } else if options.tie_key_values {
            KeyProjection::Values
        } else {
            KeyProjection::Conv(ConvLayer::load(
                src,
                &format!("{prefix}to_k."),
                fiber,
                &kv,
                conv,
            )?)
        };
        let mut null_kv = Vec::new();
        if options.use_null_kv {
            for d in fiber.degrees() {
                let shape = null_shape(d.l, &options);
                let (nk, nv) = (format!("null_keys.{}", d.l), format!("null_values.{}", d.l));
                null_kv.push((
                    relative(
                        Param::load(src, format!("{prefix}{nk}"), shape.clone())?,
                        nk,
                    ),
                    relative(Param::load(src, format!("{prefix}{nv}"), shape)?, nv),
                ));
            }
        }
        Ok(AttentionLayer {
            fiber: fiber.clone(),
            options,
            to_q,
            to_v,
            to_k,
            self_kv: if options.attend_self {
                Some((
                    lin(src, "to_self_k", fiber, &kv)?,
                    lin(src, "to_self_v", fiber, &kv)?,
                ))
            } else {
                None
            },
            null_kv,
            to_global: match global_fibers(&kv, &options)? {
                Some((gin, gout)) => Some((
                    lin(src, "to_global_k", &gin, &gout)?,
                    lin(src, "to_global_v", &gin, &gout)?,
                )),
                None => None,
            },
            to_out: if projects_out(fiber, &options) {
                Some(lin(src, "to_out", &hidden, fiber)?)
            } else {
                None
            },
        })
    }

    /// The fiber (input and output).
    pub fn fiber(&self) -> &FiberSpec {
        &self.fiber
    }

    /// How the key and value convolutions are contracted ([`ConvPath`]): [`ConvPath::Fused`]
    /// (default) and [`ConvPath::Grouped`] take logits and weighted values reassociated around
    /// the radial networks' last layers on the fused edge contractions (the query folded into
    /// the keys' last layer, [`conv_grouped::query_logits_heads_with`]; the attention weights
    /// into the values', [`conv_grouped::weighted_sum_heads_with`]; the compiled model's
    /// algorithm); the others form per-edge keys and values ([`ConvLayer::messages`]), as do
    /// E(3) fibers whose pairs keep only some kernel frequencies. Linear keys are gathered per
    /// edge in every form. All give the same values up to rounding.
    pub fn with_path(mut self, path: ConvPath) -> Self {
        if let KeyProjection::Conv(c) = self.to_k {
            self.to_k = KeyProjection::Conv(c.with_path(path));
        }
        self.to_v = self.to_v.with_path(path);
        self
    }

    /// Adds the attention to `s`.
    ///
    /// # Errors
    /// `FiberMismatch` for another input fiber; `InvalidOp` if the edges are not grouped by
    /// destination; those of the convolutions.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<N>, Error> {
        let k: Expression = edges.per_node.ok_or(Error::InvalidOp {
            op: "attention",
            problem: "the edges must be grouped by destination (EdgeGraph::per_node)",
        })?;
        x.expect_fiber(&self.fiber, "attention input")?;
        let (h, dh) = (self.options.heads, self.options.dim_head);
        let scale = 1.0 / (dh as f32).sqrt();
        let q = self.to_q.build(s, &format!("{prefix}to_q."), x)?;
        let selfkv = match &self.self_kv {
            Some((sk, sv)) => Some((
                sk.build(s, &format!("{prefix}to_self_k."), x)?,
                sv.build(s, &format!("{prefix}to_self_v."), x)?,
            )),
            None => None,
        };
        let n = dims(x.tensors()[0])[0];
        let valid: T2 = reshape(edges.valid, &[n, k]);
        let rows = Expression::from(h) * n;
        // values: reassociated on the fused contractions where the kernels take the pairs (all
        // frequencies kept), else per edge; keys likewise, or gathered linear keys
        let (vprefix, kprefix) = (format!("{prefix}to_v."), format!("{prefix}to_k."));
        // rotary embeddings rotate degree-0 keys and values per edge, which the reassociated
        // sums cannot carry: with them every degree takes the per-edge form
        let reassociate = matches!(
            self.to_v.path(),
            ConvPath::Fused | ConvPath::Contracted | ConvPath::Grouped
        ) && edges.rotary.is_none();
        // keys and values by convolution: their radial networks in one bank per output degree
        let joint = match (&self.to_k, reassociate) {
            (KeyProjection::Conv(c), true) => ConvLayer::grouped_pairs_of(
                &[(&self.to_v, vprefix.as_str()), (c, kprefix.as_str())],
                s,
                x,
                edges,
                basis,
                k,
            )?,
            _ => None,
        };
        let (vp, joint_keys) = match joint {
            Some(mut both) if both.len() == 2 => {
                let kp = both.pop();
                (both.pop(), kp)
            }
            _ if reassociate => (
                self.to_v.grouped_pairs(s, &vprefix, x, edges, basis, k)?,
                None,
            ),
            _ => (None, None),
        };
        let values = match vp {
            Some(_) => None,
            None => Some(self.to_v.messages(s, &vprefix, x, edges, basis)?),
        };
        let keys = match (&self.to_k, &vp, &values) {
            (KeyProjection::Linear(lin), ..) => Keys::Nodes(lin.build(s, &kprefix, x)?),
            (KeyProjection::Values, Some(vp), _) => Keys::Grouped(vp.clone()),
            (KeyProjection::Values, _, Some(v)) => Keys::PerEdge(v.clone()),
            (KeyProjection::Values, None, None) => return Err(no_pair("values")),
            (KeyProjection::Conv(c), ..) => {
                let grouped = match joint_keys {
                    Some(kp) => Some(kp),
                    None if vp.is_some() => c.grouped_pairs(s, &kprefix, x, edges, basis, k)?,
                    None => None,
                };
                match grouped {
                    Some(kp) => Keys::Grouped(kp),
                    None => Keys::PerEdge(c.messages(s, &kprefix, x, edges, basis)?),
                }
            }
        };
        let mut out = Vec::new();
        for (i, d) in self.fiber.degrees().iter().enumerate() {
            let (l, m) = (d.l, d.width());
            let width = dh * m;
            // rotary embeddings turn degree 0 (node angles for queries and self slots, edge
            // angles for neighbour keys and values)
            let rot = if l == 0 { edges.rotary } else { None };
            let at_nodes = |t: T3| match rot {
                Some(r) => r.rotate(t, r.node_cos, r.node_sin, h),
                None => t,
            };
            let at_edges = |t: T3| match rot {
                Some(r) => r.rotate(t, r.edge_cos, r.edge_sin, h),
                None => t,
            };
            let qn: GraphTensor<(N, X, X)> = retype(at_nodes(retype(q.tensors()[i])));
            // one softmax per (head, node) row over its neighbours, its null key and its self key
            let mut singles: Vec<(T1, T3)> = Vec::new();
            if let Some((nk, nv)) = self.null_kv.get(i) {
                let (nk, nv) = (
                    self.null_rows(s, prefix, nk, n)?,
                    self.null_rows(s, prefix, nv, n)?,
                );
                singles.push((slot_logits(qn, nk, n, h, width) * scale, nv));
            }
            if let Some((sk, sv)) = &selfkv {
                let ks = at_nodes(self.every_head(retype(sk.tensors()[i])));
                let vs = at_nodes(self.every_head(retype(sv.tensors()[i])));
                singles.push((slot_logits(qn, ks, n, h, width) * scale, vs));
            }
            let single_logits: Vec<T1> = singles.iter().map(|(a, _)| *a).collect();
            // degree 0: the cloud's global tokens, logits [(h N), g] and values [N, g, h, dh]
            let global = match (&self.to_global, l) {
                (Some(maps), 0) => Some(self.global_slots(s, prefix, maps, qn, edges, n)?),
                _ => None,
            };
            // neighbour logits, head-major rows [(h N), k]
            let logits: T2 = match &keys {
                Keys::Grouped(kp) => {
                    let qs: Vec<T3> = (0..h)
                        .map(|t| channel_slice(retype(qn), t * dh, (t + 1) * dh))
                        .collect();
                    let mut lg: Option<T3> = None;
                    for gp in kp.iter().filter(|g| g.d_out == l) {
                        let (w, b) = (self.every_head_cols(gp.w), self.every_head_cols(gp.b));
                        let t = conv_grouped::query_logits_heads_with(&gp.edges, &qs, w, b);
                        lg = Some(lg.map_or(t, |a| a + t));
                    }
                    reshape(lg.ok_or(no_pair("keys"))?, &[rows, k])
                }
                Keys::PerEdge(keys) => {
                    let ke = at_edges(self.every_head(retype(keys.tensors()[i])));
                    edge_logits(qn, ke, edges, n, k, h, width)
                }
                Keys::Nodes(keys) => {
                    let kn: GraphTensor<(N, X, X)> =
                        retype(self.every_head(retype(keys.tensors()[i])));
                    let ke: T3 = at_edges(retype(gather3::<N, X, X, E>(kn, edges.src)));
                    edge_logits(qn, ke, edges, n, k, h, width)
                }
            } * scale;
            let vmask: T3 = expand_at(valid, 0, h);
            let w = slot_softmax(SlotLogits {
                neighbours: logits,
                valid: Some(reshape(vmask, &[rows, k])),
                singles: &single_logits,
                shared: global.map(|g| g.0 * scale),
            });
            // the weighted values (N, h, dh m)
            let mut o: T3 = match (&vp, &values) {
                (Some(vp), _) => {
                    let a: Vec<T2> = (0..h).map(|t| head_rows(w.neighbours, t, n, k)).collect();
                    let mut o: Option<T3> = None;
                    for gp in vp.iter().filter(|g| g.d_out == l) {
                        let (w, b) = (self.every_head_cols(gp.w), self.every_head_cols(gp.b));
                        let y = conv_grouped::weighted_sum_heads_with(&gp.edges, &a, w, b);
                        o = Some(o.map_or(y, |acc| acc + y));
                    }
                    reshape(o.ok_or(no_pair("values"))?, &[n, h.into(), width.into()])
                }
                (None, Some(values)) => {
                    // weights back to (N, k, h)
                    let att_nb: T3 = permute(
                        reshape::<_, (X, X, X)>(w.neighbours, &[h.into(), n, k]),
                        &[1, 2, 0],
                    );
                    let ve: GraphTensor<(X, X, X, X)> = reshape(
                        at_edges(self.every_head(retype(values.tensors()[i]))),
                        &[n, k, h.into(), width.into()],
                    );
                    let w4: GraphTensor<(X, X, X, X)> = expand_at(att_nb, 3, width);
                    (ve * w4).sum_reduce::<(X, X, X), Axis<1>>()
                }
                (None, None) => return Err(no_pair("values")),
            };
            for (&a, (_, v)) in w.singles.iter().zip(&singles) {
                o = add_slot_values(o, a, *v, n, h, width);
            }
            if let (Some(a), Some((_, v))) = (w.shared, global) {
                // [(h N), g] -> [N, g, h, dh] times the values, summed over the tokens
                let g = dims(a)[1];
                let a3: T3 = permute(reshape::<_, (X, X, X)>(a, &[h.into(), n, g]), &[1, 2, 0]);
                let a4: GraphTensor<(X, X, X, X)> = expand_at(a3, 3, dh);
                o += (a4 * v).sum_reduce::<(X, X, X), Axis<1>>();
            }
            let o: T3 = reshape(o, &[n, (h * dh).into(), m.into()]);
            out.push(retype(o));
        }
        let hidden = hidden_fiber(&self.fiber, h * dh)?;
        let y = FeatureTensors::from_parts(hidden, out);
        match &self.to_out {
            Some(lin) => lin.build(s, &format!("{prefix}to_out."), &y),
            None => Ok(y),
        }
    }
}

/// An attention layer's keys in the form the build takes them.
enum Keys {
    /// Each degree pair's edges and the key convolution's last layer (reassociated logits).
    Grouped(Vec<GroupedPair>),
    /// A key per edge (`[E, C, m]` per degree).
    PerEdge(FeatureTensors<E>),
    /// A key per node (`[N, C, m]` per degree), gathered at each edge's source.
    Nodes(FeatureTensors<N>),
}

/// Logits `[(h N), k]` (head-major rows, unscaled) of the queries `qn [N, h dh, m]` against
/// per-edge keys `ke [N k, h dh, m]` (every head's channels).
fn edge_logits(
    qn: GraphTensor<(N, X, X)>,
    ke: T3,
    edges: &EdgeGraph,
    n: Expression,
    k: Expression,
    h: usize,
    width: usize,
) -> T2 {
    let qe: T3 = retype(gather3::<N, X, X, E>(qn, edges.dst));
    let prod: GraphTensor<(X, X, X, X)> = reshape(qe * ke, &[n, k, h.into(), width.into()]);
    let logits: T3 = prod.sum_reduce::<(X, X, X), Axis<3>>();
    reshape(permute(logits, &[2, 0, 1]), &[Expression::from(h) * n, k])
}

/// Logits `[(h N)]` (head-major, unscaled) of the queries `qn [N, h dh, m]` against one key
/// per node `key [N, h dh, m]` (the self or null slot).
fn slot_logits(qn: GraphTensor<(N, X, X)>, key: T3, n: Expression, h: usize, width: usize) -> T1 {
    let qs: T3 = retype(qn);
    let ps: T3 = reshape(qs * key, &[n, h.into(), width.into()]);
    let ls: T2 = ps.sum_reduce::<(X, X), Axis<2>>();
    reshape(permute(ls, &[1, 0]), &[Expression::from(h) * n])
}

/// `o + a v` per (node, head) for a single slot's weights `a` (`[(h N)]`, head-major) and
/// values `v` (`[N, h dh, m]`, every head's channels); `o` is `[N, h, dh m]`.
fn add_slot_values(o: T3, a: T1, v: T3, n: Expression, h: usize, width: usize) -> T3 {
    let a2: T2 = permute(reshape::<_, (X, X)>(a, &[h.into(), n]), &[1, 0]);
    let vs: T3 = reshape(v, &[n, h.into(), width.into()]);
    o + vs * expand_at::<_, (X, X, X)>(a2, 2, width)
}

impl AttentionLayer {
    /// A key or value tensor `[rows, C, m]` with every query head's channels: as it is, or
    /// with one key/value head its `dim_head` channels repeated for each head
    /// (`[rows, heads dim_head, m]`, head `t` at channels `t dim_head ..`).
    fn every_head(&self, t: T3) -> T3 {
        let heads = self.options.heads;
        if !self.options.one_headed_key_values || heads == 1 {
            return t;
        }
        let d = dims(t);
        let t4: GraphTensor<(X, X, X, X)> = expand_at(t, 1, heads);
        reshape(t4, &[d[0], d[1] * heads, d[2]])
    }

    /// The global slots of degree 0: logits `[(h N), g]` (unscaled, head-major rows) of the
    /// queries `qn [N, h dh, 1]` against `to_global_k` of each node's cloud tokens
    /// ([`EdgeGraph::global_features`], `[N, g, global_feats_dim]`), and the values
    /// `to_global_v` as `[N, g, h, dh]` (every head's channels).
    fn global_slots(
        &self,
        s: &mut Session,
        prefix: &str,
        (to_k, to_v): &(LinearLayer, LinearLayer),
        qn: GraphTensor<(N, X, X)>,
        edges: &EdgeGraph,
        n: Expression,
    ) -> Result<(T2, T4), Error> {
        let gf = edges.global_features.ok_or_else(|| Error::MissingInput {
            name:
                "global tokens (EdgeGraph::global_features) for an attention with global_feats_dim"
                    .into(),
        })?;
        let (h, dh) = (self.options.heads, self.options.dim_head);
        let d = dims(gf);
        let (g, width) = (d[1], d[2]);
        let tokens = FeatureTensors::<X>::from_parts(
            to_k.fiber_in().clone(),
            vec![reshape(gf, &[n * g, width, 1.into()])],
        );
        let per_token = |t: &FeatureTensors<X>| -> GraphTensor<(X, X, X, X)> {
            reshape(
                self.every_head(t.tensors()[0]),
                &[n, g, h.into(), dh.into()],
            )
        };
        let keys = per_token(&to_k.build(s, &format!("{prefix}to_global_k."), &tokens)?);
        let values = per_token(&to_v.build(s, &format!("{prefix}to_global_v."), &tokens)?);
        let q3: T3 = reshape(qn, &[n, h.into(), dh.into()]);
        let q4: GraphTensor<(X, X, X, X)> = expand_at(q3, 1, g);
        let logits: T3 = (q4 * keys).sum_reduce::<(X, X, X), Axis<3>>();
        let rows = Expression::from(h) * n;
        Ok((reshape(permute(logits, &[2, 0, 1]), &[rows, g]), values))
    }

    /// A null key or value of one degree (`[heads, dim_head, m]` or `[dim_head, m]`) as the
    /// session weight `<prefix><key>`, every query head's channels on each of `n` rows
    /// (`[n, heads dim_head, m]`, a broadcast view).
    fn null_rows(
        &self,
        s: &mut Session,
        prefix: &str,
        p: &Param,
        n: Expression,
    ) -> Result<T3, Error> {
        let m = p.shape.last().copied().unwrap_or(1);
        let kv: usize = p.shape.iter().product::<usize>() / m.max(1);
        let t: T3 = if p.shape.len() == 3 {
            let t: T3 = p.declare(s, prefix)?;
            reshape(t, &[1.into(), kv.into(), m.into()])
        } else {
            let t: T2 = p.declare(s, prefix)?;
            reshape(t, &[1.into(), kv.into(), m.into()])
        };
        let width = self.options.heads * self.options.dim_head;
        let row: T2 = reshape(self.every_head(t), &[width.into(), m.into()]);
        Ok(expand_at(row, 0, n))
    }

    /// The columns (output channels) of a radial last layer `[rows, C]` for every query head,
    /// as [`AttentionLayer::every_head`].
    fn every_head_cols(&self, w: T2) -> T2 {
        let heads = self.options.heads;
        if !self.options.one_headed_key_values || heads == 1 {
            return w;
        }
        let d = dims(w);
        let w3: T3 = expand_at(w, 1, heads);
        reshape(w3, &[d[0], d[1] * heads])
    }
}

/// A degree of the attention's fiber that its key or value convolution does not reach.
fn no_pair(what: &'static str) -> Error {
    Error::InvalidOp {
        op: "attention",
        problem: match what {
            "keys" => "a degree of the fiber has no key convolution pair",
            _ => "a degree of the fiber has no value convolution pair",
        },
    }
}

/// Rows `t n .. (t + 1) n` of a head-major `[(h n), k]`, contiguous.
fn head_rows(t: T2, head: usize, n: Expression, k: Expression) -> T2 {
    let mut st = t.shape;
    st.slice(&[(n * head, n * (head + 1)), (0.into(), k)]);
    reshape(
        GraphTensor::<(X, X)>::from_id(t.id, st, t.graph_ref),
        &[n, k],
    )
}

/// `AttentionBlockSE3`: `x + Attention(NormSE3(x))` (keys `prenorm.*`, `attn.*`).
#[derive(Debug, Clone)]
pub struct AttentionBlockLayer {
    prenorm: NormLayer,
    attn: AttentionLayer,
}

impl AttentionBlockLayer {
    /// A block with fresh weights.
    ///
    /// # Errors
    /// As [`AttentionLayer::new`].
    pub fn new(
        fiber: &FiberSpec,
        options: AttentionOptions,
        gated: bool,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let scale = norm_scale(gated);
        Ok(AttentionBlockLayer {
            prenorm: NormLayer::new(fiber, scale, NormActivation::Gelu),
            attn: AttentionLayer::new(fiber, options, rng)?,
        })
    }

    /// Loads an `AttentionBlockSE3` under `prefix`.
    ///
    /// # Errors
    /// As [`AttentionLayer::load`] and [`NormLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        options: AttentionOptions,
        gated: bool,
    ) -> Result<Self, Error> {
        let scale = norm_scale(gated);
        Ok(AttentionBlockLayer {
            attn: AttentionLayer::load(src, &format!("{prefix}attn."), fiber, options)?,
            prenorm: NormLayer::load(
                src,
                &format!("{prefix}prenorm."),
                fiber,
                scale,
                NormActivation::Gelu,
            )?,
        })
    }

    /// The fiber (input and output).
    pub fn fiber(&self) -> &FiberSpec {
        self.attn.fiber()
    }

    /// Adds the block to `s`.
    ///
    /// # Errors
    /// As [`AttentionLayer::build`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<N>, Error> {
        let y = self.prenorm.build(s, &format!("{prefix}prenorm."), x)?;
        let y = self
            .attn
            .build(s, &format!("{prefix}attn."), &y, edges, basis)?;
        Ok(y.residual(x))
    }
}

/// `FeedForwardBlockSE3`: `x + Linear(NormSE3(Linear_(4x)(NormSE3(x))))` (keys `prenorm.*`,
/// `feedforward.project_in.*`, `feedforward.nonlin.*`, `feedforward.project_out.*`).
#[derive(Debug, Clone)]
pub struct FeedForwardBlockLayer {
    prenorm: NormLayer,
    project_in: LinearLayer,
    nonlin: NormLayer,
    project_out: LinearLayer,
}

fn norm_scale(gated: bool) -> NormScale {
    if gated {
        NormScale::Gated
    } else {
        NormScale::PerChannel
    }
}

fn ff_hidden(fiber: &FiberSpec) -> Result<FiberSpec, Error> {
    FiberSpec::new(
        fiber
            .degrees()
            .iter()
            .map(|d| DegreeSpec::new(d.l, 4 * d.channels, d.parity))
            .collect(),
    )
}

impl FeedForwardBlockLayer {
    /// A block with fresh linear weights (variance `1 / c_in`) and unit norm scales (identity
    /// gates if `gated`).
    ///
    /// # Errors
    /// `ZeroChannels` for an empty fiber.
    pub fn new(fiber: &FiberSpec, gated: bool, rng: &mut impl Rng) -> Result<Self, Error> {
        let hidden = ff_hidden(fiber)?;
        Ok(FeedForwardBlockLayer {
            prenorm: NormLayer::new(fiber, norm_scale(gated), NormActivation::Gelu),
            project_in: LinearLayer::new(fiber, &hidden, false, rng)?,
            nonlin: NormLayer::new(&hidden, NormScale::PerChannel, NormActivation::Gelu),
            project_out: LinearLayer::new(&hidden, fiber, false, rng)?,
        })
    }

    /// The fiber (input and output).
    pub fn fiber(&self) -> &FiberSpec {
        self.prenorm.fiber()
    }

    /// Loads a `FeedForwardBlockSE3` under `prefix`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        gated: bool,
    ) -> Result<Self, Error> {
        let scale = norm_scale(gated);
        let hidden = ff_hidden(fiber)?;
        let se3t = LinearLayout::Se3TransformerPytorch;
        Ok(FeedForwardBlockLayer {
            prenorm: NormLayer::load(
                src,
                &format!("{prefix}prenorm."),
                fiber,
                scale,
                NormActivation::Gelu,
            )?,
            project_in: LinearLayer::load(
                src,
                &format!("{prefix}feedforward.project_in."),
                fiber,
                &hidden,
                se3t,
                false,
            )?,
            nonlin: NormLayer::load(
                src,
                &format!("{prefix}feedforward.nonlin."),
                &hidden,
                NormScale::PerChannel,
                NormActivation::Gelu,
            )?,
            project_out: LinearLayer::load(
                src,
                &format!("{prefix}feedforward.project_out."),
                &hidden,
                fiber,
                se3t,
                false,
            )?,
        })
    }

    /// Adds the block to `s`.
    ///
    /// # Errors
    /// `FiberMismatch` for another input fiber.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
    ) -> Result<FeatureTensors<N>, Error> {
        let y = self.prenorm.build(s, &format!("{prefix}prenorm."), x)?;
        let y = self
            .project_in
            .build(s, &format!("{prefix}feedforward.project_in."), &y)?;
        let y = self
            .nonlin
            .build(s, &format!("{prefix}feedforward.nonlin."), &y)?;
        let y = self
            .project_out
            .build(s, &format!("{prefix}feedforward.project_out."), &y)?;
        Ok(y.residual(x))
    }
}

/// [`AttentionLayer`] typed by its fiber: `Attention<F>` maps features of `F` to features of
/// `F` (fiber-preserving), over edges grouped by destination.
#[derive(Debug, Clone)]
pub struct Attention<F: Fiber> {
    layer: AttentionLayer,
    fiber: PhantomData<F>,
}

impl<F: Fiber> Attention<F> {
    /// An attention layer with fresh weights.
    ///
    /// # Errors
    /// As [`AttentionLayer::new`].
    pub fn new(options: AttentionOptions, rng: &mut impl Rng) -> Result<Self, Error> {
        Ok(Attention {
            layer: AttentionLayer::new(&F::spec(), options, rng)?,
            fiber: PhantomData,
        })
    }

    /// Loads an `AttentionSE3` checkpoint under `prefix`.
    ///
    /// # Errors
    /// As [`AttentionLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        options: AttentionOptions,
    ) -> Result<Self, Error> {
        Ok(Attention {
            layer: AttentionLayer::load(src, prefix, &F::spec(), options)?,
            fiber: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &AttentionLayer {
        &self.layer
    }

    /// Adds the attention to a graph (see [`AttentionLayer::build`]).
    ///
    /// # Errors
    /// As [`AttentionLayer::build`].
    pub fn build<X: FeedsGraph<F, Rows = N>>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &X,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<F>, Error> {
        let x = X::feed_graph(x);
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
            edges,
            basis,
        )?))
    }
}

/// [`AttentionBlockLayer`] typed by its fiber: `x + Attention(NormSE3(x))`, from `F` to `F`.
#[derive(Debug, Clone)]
pub struct AttentionBlock<F: Fiber> {
    layer: AttentionBlockLayer,
    fiber: PhantomData<F>,
}

impl<F: Fiber> AttentionBlock<F> {
    /// A block with fresh weights; `gated` selects the pre-norm's gated scale
    /// (`norm_gated_scale`).
    ///
    /// # Errors
    /// As [`AttentionLayer::new`].
    pub fn new(options: AttentionOptions, gated: bool, rng: &mut impl Rng) -> Result<Self, Error> {
        Ok(AttentionBlock {
            layer: AttentionBlockLayer::new(&F::spec(), options, gated, rng)?,
            fiber: PhantomData,
        })
    }

    /// Loads an `AttentionBlockSE3` checkpoint under `prefix` (keys `prenorm.*`, `attn.*`).
    ///
    /// # Errors
    /// As [`AttentionBlockLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        options: AttentionOptions,
        gated: bool,
    ) -> Result<Self, Error> {
        Ok(AttentionBlock {
            layer: AttentionBlockLayer::load(src, prefix, &F::spec(), options, gated)?,
            fiber: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &AttentionBlockLayer {
        &self.layer
    }

    /// The typed view of a run-time layer.
    ///
    /// # Errors
    /// `FiberMismatch` if the layer's fiber is not `F`.
    pub fn from_layer(layer: AttentionBlockLayer) -> Result<Self, Error> {
        F::check_spec(layer.fiber())?;
        Ok(Self {
            layer,
            fiber: PhantomData,
        })
    }

    /// Adds the block to a graph (see [`AttentionBlockLayer::build`]).
    ///
    /// # Errors
    /// As [`AttentionLayer::build`].
    pub fn build<X: FeedsGraph<F, Rows = N>>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &X,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<F>, Error> {
        let x = X::feed_graph(x);
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
            edges,
            basis,
        )?))
    }
}

/// [`FeedForwardBlockLayer`] typed by its fiber:
/// `x + Linear(NormSE3(Linear_(4x)(NormSE3(x))))`, from `F` to `F`.
#[derive(Debug, Clone)]
pub struct FeedForwardBlock<F: Fiber> {
    layer: FeedForwardBlockLayer,
    fiber: PhantomData<F>,
}

impl<F: Fiber> FeedForwardBlock<F> {
    /// A block with fresh weights (see [`FeedForwardBlockLayer::new`]).
    ///
    /// # Errors
    /// As [`FeedForwardBlockLayer::new`].
    pub fn new(gated: bool, rng: &mut impl Rng) -> Result<Self, Error> {
        Ok(FeedForwardBlock {
            layer: FeedForwardBlockLayer::new(&F::spec(), gated, rng)?,
            fiber: PhantomData,
        })
    }

    /// Loads a `FeedForwardBlockSE3` checkpoint under `prefix`.
    ///
    /// # Errors
    /// As [`FeedForwardBlockLayer::load`].
    pub fn load(src: &mut dyn ParamSource, prefix: &str, gated: bool) -> Result<Self, Error> {
        Ok(FeedForwardBlock {
            layer: FeedForwardBlockLayer::load(src, prefix, &F::spec(), gated)?,
            fiber: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &FeedForwardBlockLayer {
        &self.layer
    }

    /// The typed view of a run-time layer.
    ///
    /// # Errors
    /// `FiberMismatch` if the layer's fiber is not `F`.
    pub fn from_layer(layer: FeedForwardBlockLayer) -> Result<Self, Error> {
        F::check_spec(layer.fiber())?;
        Ok(Self {
            layer,
            fiber: PhantomData,
        })
    }

    /// Adds the block to a graph (see [`FeedForwardBlockLayer::build`]).
    ///
    /// # Errors
    /// Those of [`Session::set_weight`] (none for a well-formed block).
    pub fn build<X: FeedsGraph<F, Rows = N>>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let x = X::feed_graph(x);
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
        )?))
    }
}

impl AttentionLayer {
    /// Visits every parameter as `(<prefix><key>, param)`: `to_q.*`, `to_k.*`, `to_v.*`,
    /// `to_self_k.*`, `to_self_v.*`, `to_out.*` (those the layer has).
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.to_q.visit_params(&format!("{prefix}to_q."), f);
        match &self.to_k {
            KeyProjection::Conv(k) => k.visit_params(&format!("{prefix}to_k."), f),
            KeyProjection::Linear(k) => k.visit_params(&format!("{prefix}to_k."), f),
            KeyProjection::Values => {}
        }
        self.to_v.visit_params(&format!("{prefix}to_v."), f);
        if let Some((k, v)) = &self.self_kv {
            k.visit_params(&format!("{prefix}to_self_k."), f);
            v.visit_params(&format!("{prefix}to_self_v."), f);
        }
        for (k, v) in &self.null_kv {
            f(&format!("{prefix}{}", k.key), k);
            f(&format!("{prefix}{}", v.key), v);
        }
        if let Some((k, v)) = &self.to_global {
            k.visit_params(&format!("{prefix}to_global_k."), f);
            v.visit_params(&format!("{prefix}to_global_v."), f);
        }
        if let Some(o) = &self.to_out {
            o.visit_params(&format!("{prefix}to_out."), f);
        }
    }

    /// Visits every parameter mutably, as [`AttentionLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.to_q.visit_params_mut(&format!("{prefix}to_q."), f)?;
        match &mut self.to_k {
            KeyProjection::Conv(k) => k.visit_params_mut(&format!("{prefix}to_k."), f)?,
            KeyProjection::Linear(k) => k.visit_params_mut(&format!("{prefix}to_k."), f)?,
            KeyProjection::Values => {}
        }
        self.to_v.visit_params_mut(&format!("{prefix}to_v."), f)?;
        if let Some((k, v)) = &mut self.self_kv {
            k.visit_params_mut(&format!("{prefix}to_self_k."), f)?;
            v.visit_params_mut(&format!("{prefix}to_self_v."), f)?;
        }
        for (k, v) in &mut self.null_kv {
            f(&format!("{prefix}{}", k.key), k)?;
            f(&format!("{prefix}{}", v.key), v)?;
        }
        if let Some((k, v)) = &mut self.to_global {
            k.visit_params_mut(&format!("{prefix}to_global_k."), f)?;
            v.visit_params_mut(&format!("{prefix}to_global_v."), f)?;
        }
        if let Some(o) = &mut self.to_out {
            o.visit_params_mut(&format!("{prefix}to_out."), f)?;
        }
        Ok(())
    }
}

impl AttentionBlockLayer {
    /// Visits every parameter as `(<prefix><key>, param)`: `prenorm.*`, then `attn.*`.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.prenorm.visit_params(&format!("{prefix}prenorm."), f);
        self.attn.visit_params(&format!("{prefix}attn."), f);
    }

    /// Visits every parameter mutably, as [`AttentionBlockLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.prenorm
            .visit_params_mut(&format!("{prefix}prenorm."), f)?;
        self.attn.visit_params_mut(&format!("{prefix}attn."), f)
    }
}

impl FeedForwardBlockLayer {
    /// Visits every parameter as `(<prefix><key>, param)`: `prenorm.*`,
    /// `feedforward.project_in.*`, `feedforward.nonlin.*`, `feedforward.project_out.*`.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.prenorm.visit_params(&format!("{prefix}prenorm."), f);
        self.project_in
            .visit_params(&format!("{prefix}feedforward.project_in."), f);
        self.nonlin
            .visit_params(&format!("{prefix}feedforward.nonlin."), f);
        self.project_out
            .visit_params(&format!("{prefix}feedforward.project_out."), f);
    }

    /// Visits every parameter mutably, as [`FeedForwardBlockLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.prenorm
            .visit_params_mut(&format!("{prefix}prenorm."), f)?;
        self.project_in
            .visit_params_mut(&format!("{prefix}feedforward.project_in."), f)?;
        self.nonlin
            .visit_params_mut(&format!("{prefix}feedforward.nonlin."), f)?;
        self.project_out
            .visit_params_mut(&format!("{prefix}feedforward.project_out."), f)
    }
}

impl<F: Fiber> Attention<F> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut AttentionLayer {
        &mut self.layer
    }
}

impl<F: Fiber> AttentionBlock<F> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut AttentionBlockLayer {
        &mut self.layer
    }
}

impl<F: Fiber> FeedForwardBlock<F> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut FeedForwardBlockLayer {
        &mut self.layer
    }
}
