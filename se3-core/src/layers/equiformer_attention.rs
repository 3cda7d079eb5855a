//! Equiformer's attention blocks (L2-distance and MLP attention) over the neighbour slots of
//! [`AlignedEdges`].

use luminal::prelude::{symbolic::Expression, *};

use super::depthwise_tp::concat_axis1;
use super::depthwise_tp::{AlignedEdges, DepthwiseTensorProductLayer, DtpOptions};
use super::graph::channel_slice;
use super::graph::{
    constant, dims, expand_at, mm, reshape, retype, transpose, FeatureTensors, Param, ParamSource,
    X,
};
use super::linear::{LinearLayer, LinearLayout};
use super::rms_norm::RmsNormLayer;
use super::silu_gate::SiluGateLayer;
use super::taylor_linear_attention::{NodeBatch, TaylorLinearAttentionLayer};
use crate::exec::Session;
use crate::fiber::{DegreeSpec, FiberSpec};
use crate::Error;

/// Logits of masked slots: `-1e30` (softmax weight 0 next to any unmasked slot, uniform if all
/// are masked, as the library's `masked_fill(-finfo.max)`).
const MASKED: f32 = -1e30;

/// Options of an [`EquiformerAttentionLayer`] (constructor arguments of the library's
/// `L2DistAttention` / `MLPAttention`).
#[derive(Debug, Clone, PartialEq)]
pub struct EquiformerAttentionOptions {
    /// Heads per degree.
    pub heads: Vec<usize>,
    /// Channels per head per degree.
    pub dim_head: Vec<usize>,
    /// One key/value head shared by all query heads.
    pub single_headed_kv: bool,
    /// L2-distance attention (`true`) or MLP attention.
    pub l2_distance: bool,
    /// Sigmoid gate per head from the degree-0 features.
    pub gate_heads: bool,
    /// Edge feature width before the distance.
    pub edge_dim: usize,
    /// Hidden width of the radial networks.
    pub radial_hidden: usize,
    /// MLP attention: hidden logit channels per head.
    pub attn_hidden_mult: usize,
    /// MLP attention: negative slope of the LeakyReLU before the logits.
    pub leaky_slope: f32,
    /// Degree-0 linear-attention heads ([`TaylorLinearAttentionLayer`], value-gated for L2
    /// attention), appended to the degree-0 head outputs before `to_out`.
    pub linear_heads: usize,
    /// Channels per linear-attention head.
    pub linear_dim_head: usize,
}

#[derive(Debug, Clone)]
enum Scores {
    L2 {
        to_q: LinearLayer,
        to_kv: DepthwiseTensorProductLayer,
    },
    Mlp {
        to_attn_and_v: DepthwiseTensorProductLayer,
        logits: Vec<Param>,
        value_gate: SiluGateLayer,
        to_values: LinearLayer,
        attn_hidden: Vec<usize>,
    },
}

/// equiformer-pytorch's `L2DistAttention` / `MLPAttention` with `attend_self`, on node
/// features of `fiber` (degrees `0..=L`):
///
/// `x' = Norm(x)`; per node `i` the slots are itself and its `k` neighbours
/// ([`DepthwiseTensorProductLayer`] unpooled, `to_kv` / `to_attn_and_v`); per degree `l` and
/// head `h`, `a_ij = softmax_j(s_ij)`, `out_l[i, h] = g_h(x'_0[i]) sum_j a_ij v_l[ij, h]`, then
/// `to_out`.
///
/// * L2: `q = to_q(x')`, `s_ij = -scale_l |q_i - k_ij + 1e-6|` for degree 0 (norm over the
///   head's channels), `-scale_l sum_c |q_ic - k_ijc + 1e-6|` (norm over m) for `l >= 1`;
///   masked slots are excluded for `l >= 1` only (the library's quirk);
///   key / value channels are `[k, v]` per head (or once for all heads with `single_headed_kv`).
/// * MLP: the degree-0 output is `[t_0, .., t_L, v_0 + gates]`; `s_ij = scale_l
///   W_l leaky_relu(t_l[ij])` (masked slots excluded for every degree); values are
///   `Linear(Gate(v))`.
///
/// `scale_l = dim_head_l^(-1/2)`, `g = sigmoid(Linear(x'_0))` (if `gate_heads`).
#[derive(Debug, Clone)]
pub struct EquiformerAttentionLayer {
    fiber: FiberSpec,
    opts: EquiformerAttentionOptions,
    prenorm: RmsNormLayer,
    scores: Scores,
    head_gates: Option<(Param, Param)>,
    linear: Option<TaylorLinearAttentionLayer>,
    to_out: LinearLayer,
}

fn fiber_of(ch: &[usize]) -> Result<FiberSpec, Error> {
    FiberSpec::new(
        ch.iter()
            .enumerate()
            .map(|(l, &c)| DegreeSpec::new(l, c, None))
            .collect(),
    )
}

impl EquiformerAttentionLayer {
    /// Loads the block stored under `prefix` (`layers.blocks.<i>.0.`).
    ///
    /// # Errors
    /// `LengthMismatch` if `heads` / `dim_head` do not have one entry per degree or the MLP
    /// value gate has too few scalars; checkpoint errors from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        opts: &EquiformerAttentionOptions,
    ) -> Result<Self, Error> {
        let nd = fiber.degrees().len();
        for (what, v) in [
            ("heads per degree", &opts.heads),
            ("dim_head per degree", &opts.dim_head),
        ] {
            if v.len() != nd {
                return Err(Error::LengthMismatch {
                    what,
                    expected: nd,
                    found: v.len(),
                });
            }
        }
        let hidden: Vec<usize> = opts
            .heads
            .iter()
            .zip(&opts.dim_head)
            .map(|(h, d)| h * d)
            .collect();
        let kv_base = if opts.single_headed_kv {
            opts.dim_head.clone()
        } else {
            hidden.clone()
        };
        let dtp = |edge_dim, radial_hidden| DtpOptions {
            pool: false,
            self_interaction: true,
            edge_dim,
            radial_hidden,
        };
        let prenorm = RmsNormLayer::load(src, &format!("{prefix}prenorm."), fiber)?;
        let scores = if opts.l2_distance {
            let kv_fiber = fiber_of(&kv_base.iter().map(|c| 2 * c).collect::<Vec<_>>())?;
            let to_q = LinearLayer::load(
                src,
                &format!("{prefix}to_q."),
                fiber,
                &fiber_of(&hidden)?,
                LinearLayout::Se3TransformerPytorch,
                false,
            )?;
            let to_kv = DepthwiseTensorProductLayer::load(
                src,
                &format!("{prefix}to_kv."),
                fiber,
                &kv_fiber,
                dtp(opts.edge_dim, opts.radial_hidden),
            )?;
            Scores::L2 { to_q, to_kv }
        } else {
            let type0 = kv_base[0];
            let htypes: usize = kv_base[1..].iter().sum();
            let attn_hidden: Vec<usize> = opts
                .heads
                .iter()
                .map(|h| h * opts.attn_hidden_mult)
                .collect();
            let mut inter = kv_base.clone();
            inter[0] = attn_hidden.iter().sum::<usize>() + type0 + htypes;
            let mut gate_in = kv_base.clone();
            gate_in[0] = type0 + htypes;
            let to_attn_and_v = DepthwiseTensorProductLayer::load(
                src,
                &format!("{prefix}to_attn_and_v."),
                fiber,
                &fiber_of(&inter)?,
                dtp(opts.edge_dim, opts.radial_hidden),
            )?;
            let logits = attn_hidden
                .iter()
                .zip(&opts.heads)
                .enumerate()
                .map(|(l, (&a, &h))| {
                    let p = Param::load(
                        src,
                        format!("{prefix}to_attn_logits.{l}.1.weight"),
                        vec![h, a],
                    )?;
                    // declared under `<prefix>to_attn_logits.<l>.1.`: the checkpoint key
                    Ok(Param {
                        key: "weight".to_string(),
                        ..p
                    })
                })
                .collect::<Result<_, Error>>()?;
            let value_gate = SiluGateLayer::new(&fiber_of(&gate_in)?)?;
            let vf = fiber_of(&kv_base)?;
            let to_values = LinearLayer::load(
                src,
                &format!("{prefix}to_values.1."),
                &vf,
                &vf,
                LinearLayout::Se3TransformerPytorch,
                false,
            )?;
            Scores::Mlp {
                to_attn_and_v,
                logits,
                value_gate,
                to_values,
                attn_hidden,
            }
        };
        let head_gates = if opts.gate_heads {
            let c0 = fiber.channels(0).unwrap_or(0);
            let h: usize = opts.heads.iter().sum();
            // declared under `<prefix>attn_head_gates.1.`: the checkpoint keys
            let short = |p: Param, key: &str| Param {
                key: key.to_string(),
                ..p
            };
            Some((
                short(
                    Param::load(
                        src,
                        format!("{prefix}attn_head_gates.1.weight"),
                        vec![h, c0],
                    )?,
                    "weight",
                ),
                short(
                    Param::load(src, format!("{prefix}attn_head_gates.1.bias"), vec![h])?,
                    "bias",
                ),
            ))
        } else {
            None
        };
        let linear = if opts.linear_heads > 0 {
            Some(TaylorLinearAttentionLayer::load(
                src,
                &format!("{prefix}linear_attn."),
                fiber.channels(0).unwrap_or(0),
                opts.linear_heads,
                opts.linear_dim_head,
                opts.l2_distance,
            )?)
        } else {
            None
        };
        let mut out_in = hidden.clone();
        out_in[0] += linear.as_ref().map_or(0, |l| l.width());
        let to_out = LinearLayer::load(
            src,
            &format!("{prefix}to_out."),
            &fiber_of(&out_in)?,
            fiber,
            LinearLayout::Se3TransformerPytorch,
            false,
        )?;
        Ok(EquiformerAttentionLayer {
            fiber: fiber.clone(),
            opts: opts.clone(),
            prenorm,
            scores,
            head_gates,
            linear,
            to_out,
        })
    }

    /// The block's output (without the residual) on node features `x`.
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not of the block's fiber; errors of the inner layers.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
        edges: &AlignedEdges,
        nodes: Option<&NodeBatch>,
    ) -> Result<FeatureTensors<R>, Error> {
        let xn = self.prenorm.build(s, &format!("{prefix}prenorm."), x)?;
        let (n, k) = (edges.nodes(), edges.k());
        let kk = k + 1;
        let (ne, kke) = (Expression::from(n), Expression::from(kk));
        // Slot mask (N, k + 1): the node itself, then its neighbour mask.
        let ones: GraphTensor<(X, X)> =
            constant(s, &format!("{prefix}self_slot"), vec![1.0; n], &[n, 1])?;
        let nb: GraphTensor<(X, X)> = reshape(edges.mask(), &[ne, k.into()]);
        let slot_mask: GraphTensor<(X, X)> = concat_axis1(&[ones, nb]);
        let x0 = xn.tensors()[0];
        let c0 = dims(x0)[1];
        let x0: GraphTensor<(X, X)> = reshape(retype::<_, (X, X, X)>(x0), &[ne, c0]);
        let gates = match &self.head_gates {
            Some((w, b)) => {
                let wt: GraphTensor<(X, X)> =
                    w.declare(s, &format!("{prefix}attn_head_gates.1."))?;
                let bt: GraphTensor<(X,)> = b.declare(s, &format!("{prefix}attn_head_gates.1."))?;
                let g = mm(x0, transpose(wt)) + expand_at::<_, (X, X)>(bt, 0, ne);
                Some(g.sigmoid())
            }
            None => None,
        };
        let mut outs = Vec::new();
        let mut head_off = 0;
        match &self.scores {
            Scores::L2 { to_q, to_kv } => {
                let q = to_q.build(s, &format!("{prefix}to_q."), &xn)?;
                let kv = to_kv.build(s, &format!("{prefix}to_kv."), &xn, edges)?;
                for (pos, d) in self.fiber.degrees().iter().enumerate() {
                    let (h, dh, m) = (self.opts.heads[pos], self.opts.dim_head[pos], d.width());
                    let dm = Expression::from(dh * m);
                    let kv3: GraphTensor<(X, X, X)> = retype(kv.tensors()[pos]);
                    let (kh, vh) = if self.opts.single_headed_kv {
                        let kv4: GraphTensor<(X, X, X, X)> =
                            reshape(kv3, &[ne, kke, 1.into(), (2 * dh * m).into()]);
                        let (a, b) = halves(kv4, dh * m);
                        (expand_heads(a, h), expand_heads(b, h))
                    } else {
                        let kv4: GraphTensor<(X, X, X, X)> =
                            reshape(kv3, &[ne, kke, h.into(), (2 * dh * m).into()]);
                        halves(kv4, dh * m)
                    };
                    let q3: GraphTensor<(X, X, X)> = retype(q.tensors()[pos]);
                    let q4: GraphTensor<(X, X, X)> = reshape(q3, &[ne, h.into(), dm]);
                    let q4: GraphTensor<(X, X, X, X)> = expand_at(q4, 1, kke);
                    let diff = q4 - kh + 1e-6;
                    let rows = Expression::from(n * kk * h * dh);
                    let dist: GraphTensor<(X,)> = if d.l == 0 {
                        // Degree 0: one norm over the head's channels.
                        let sq0: GraphTensor<(X, X)> =
                            reshape(diff * diff, &[(n * kk * h).into(), dh.into()]);
                        sq0.sum_reduce::<(X,), Axis<1>>().sqrt()
                    } else {
                        // Degree l >= 1: a norm over m per channel, summed over channels.
                        let sq: GraphTensor<(X, X)> = reshape(diff * diff, &[rows, m.into()]);
                        let norms: GraphTensor<(X,)> = sq.sum_reduce::<(X,), Axis<1>>().sqrt();
                        let per: GraphTensor<(X, X)> =
                            reshape(norms, &[(n * kk * h).into(), dh.into()]);
                        per.sum_reduce::<(X,), Axis<1>>()
                    };
                    let scale = (dh as f32).powf(-0.5);
                    let logits: GraphTensor<(X, X, X)> =
                        reshape(dist * (-scale), &[ne, kke, h.into()]);
                    let logits = if d.l == 0 {
                        logits
                    } else {
                        masked(logits, slot_mask, h)
                    };
                    let attn = softmax_slots(logits);
                    outs.push(self.combine(attn, vh, gates, head_off, h, dh, m, n)?);
                    head_off += h;
                }
            }
            Scores::Mlp {
                to_attn_and_v,
                logits,
                value_gate,
                to_values,
                attn_hidden,
            } => {
                let inter =
                    to_attn_and_v.build(s, &format!("{prefix}to_attn_and_v."), &xn, edges)?;
                let t0: GraphTensor<(X, X, X)> = retype(inter.tensors()[0]);
                let total = dims(t0)[1].to_usize().unwrap_or(0);
                let a_total: usize = attn_hidden.iter().sum();
                let mut gate_in = vec![retype(channel_slice(t0, a_total, total))];
                gate_in.extend(inter.tensors().iter().skip(1).copied());
                let mut gspec: Vec<DegreeSpec> = inter.spec().degrees().to_vec();
                gspec[0] = DegreeSpec::new(0, total - a_total, None);
                let gate_in = FeatureTensors::new(FiberSpec::new(gspec)?, gate_in)?;
                let values = value_gate.build(&gate_in)?;
                let values = to_values.build(s, &format!("{prefix}to_values.1."), &values)?;
                let mut off = 0;
                for (pos, d) in self.fiber.degrees().iter().enumerate() {
                    let (h, dh, m) = (self.opts.heads[pos], self.opts.dim_head[pos], d.width());
                    let a = channel_slice(t0, off, off + attn_hidden[pos]);
                    off += attn_hidden[pos];
                    let a2: GraphTensor<(X, X)> =
                        reshape(a, &[(n * kk).into(), attn_hidden[pos].into()]);
                    let w: GraphTensor<(X, X)> =
                        logits[pos].declare(s, &format!("{prefix}to_attn_logits.{pos}.1."))?;
                    let scale = (dh as f32).powf(-0.5);
                    let lg = mm(a2.leaky_relu(self.opts.leaky_slope), transpose(w)) * scale;
                    let lg: GraphTensor<(X, X, X)> = reshape(lg, &[ne, kke, h.into()]);
                    let attn = softmax_slots(masked(lg, slot_mask, h));
                    let v3: GraphTensor<(X, X, X)> = retype(values.tensors()[pos]);
                    let vh = if self.opts.single_headed_kv {
                        let v4: GraphTensor<(X, X, X, X)> =
                            reshape(v3, &[ne, kke, 1.into(), (dh * m).into()]);
                        expand_heads(v4, h)
                    } else {
                        reshape(v3, &[ne, kke, h.into(), (dh * m).into()])
                    };
                    outs.push(self.combine(attn, vh, gates, head_off, h, dh, m, n)?);
                    head_off += h;
                }
            }
        }
        let mut hidden: Vec<usize> = self
            .opts
            .heads
            .iter()
            .zip(&self.opts.dim_head)
            .map(|(h, d)| h * d)
            .collect();
        if let Some(lin) = &self.linear {
            let nodes = nodes.ok_or(Error::Empty {
                what: "node batch of an attention block with linear-attention heads",
            })?;
            let la = lin.build(s, &format!("{prefix}linear_attn."), x0, nodes)?;
            let la: GraphTensor<(X, X, X)> = reshape(la, &[ne, lin.width().into(), 1.into()]);
            let o0: GraphTensor<(X, X, X)> = retype(outs[0]);
            outs[0] = retype(concat_axis1(&[o0, la]));
            hidden[0] += lin.width();
        }
        let hf = FeatureTensors::from_parts(fiber_of(&hidden)?, outs);
        self.to_out.build(s, &format!("{prefix}to_out."), &hf)
    }

    /// `g_h sum_j a_ij v_ij` as `(N, h dh, m)`.
    #[allow(clippy::too_many_arguments)]
    fn combine<R: Dimension>(
        &self,
        attn: GraphTensor<(X, X, X)>,
        v: GraphTensor<(X, X, X, X)>,
        gates: Option<GraphTensor<(X, X)>>,
        head_off: usize,
        h: usize,
        dh: usize,
        m: usize,
        n: usize,
    ) -> Result<super::graph::DegreeGraphTensor<R>, Error> {
        let dm = Expression::from(dh * m);
        let a4: GraphTensor<(X, X, X, X)> = expand_at(attn, 3, dm);
        let mut out: GraphTensor<(X, X, X)> = (a4 * v).sum_reduce::<(X, X, X), Axis<1>>();
        if let Some(g) = gates {
            let gd = dims(g);
            let mut sh = g.shape;
            sh.slice(&[
                (Expression::from(0), gd[0]),
                (Expression::from(head_off), Expression::from(head_off + h)),
            ]);
            let gh: GraphTensor<(X, X)> = GraphTensor::from_id(g.id, sh, g.graph_ref).contiguous();
            let g3: GraphTensor<(X, X, X)> = expand_at(gh, 2, dm);
            out *= g3;
        }
        Ok(retype(reshape::<_, (X, X, X)>(
            out,
            &[n.into(), (h * dh).into(), m.into()],
        )))
    }
}

/// A `(N, slots, heads, width)` tensor.
type Slots4 = GraphTensor<(X, X, X, X)>;

/// The two halves `[0, w)` and `[w, 2w)` of the last axis.
fn halves(t: GraphTensor<(X, X, X, X)>, w: usize) -> (Slots4, Slots4) {
    let d = dims(t);
    let part = |a: usize, b: usize| {
        let mut sh = t.shape;
        sh.slice(&[
            (Expression::from(0), d[0]),
            (Expression::from(0), d[1]),
            (Expression::from(0), d[2]),
            (Expression::from(a), Expression::from(b)),
        ]);
        GraphTensor::<(X, X, X, X)>::from_id(t.id, sh, t.graph_ref).contiguous()
    };
    (part(0, w), part(w, 2 * w))
}

/// `(N, S, 1, W)` broadcast to `h` heads.
fn expand_heads(t: GraphTensor<(X, X, X, X)>, h: usize) -> GraphTensor<(X, X, X, X)> {
    let d = dims(t);
    let t3: GraphTensor<(X, X, X)> = reshape(t, &[d[0], d[1], d[3]]);
    expand_at(t3, 2, h)
}

/// Logits `(N, S, h)` with masked slots (mask `(N, S)` of 0/1) set to [`MASKED`].
fn masked(
    logits: GraphTensor<(X, X, X)>,
    mask: GraphTensor<(X, X)>,
    h: usize,
) -> GraphTensor<(X, X, X)> {
    let m3: GraphTensor<(X, X, X)> = expand_at(mask, 2, h);
    logits + (m3 + (-1.0)) * (-MASKED)
}

/// Softmax over the slot axis 1 of `(N, S, h)`.
fn softmax_slots(logits: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
    let d = dims(logits);
    let mx: GraphTensor<(X, X)> = logits.max_reduce::<(X, X), Axis<1>>();
    let e = (logits - expand_at::<_, (X, X, X)>(mx, 1, d[1])).exp();
    let sum: GraphTensor<(X, X)> = e.sum_reduce::<(X, X), Axis<1>>();
    e / expand_at::<_, (X, X, X)>(sum, 1, d[1])
}
