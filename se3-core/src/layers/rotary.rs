//! Rotary embeddings of degree-0 attention (se3-transformer-pytorch's `rotary_position` and
//! `rotary_rel_dist`): queries, keys and values of degree 0 are rotated in pairs of channels
//! by angles that depend on the node's position in its cloud and on the edge's length, so
//! the logits see relative positions.
//!
//! Convention (the library's `SinusoidalEmbeddings` and `apply_rotary_pos_emb`): with
//! `inv_freq[f] = 10000^(-2f / d)`, `f < ceil(d / 2)`, `d = dim_head / (number of rotaries)`,
//! the angles of a position `t` are `[t inv_freq[0], t inv_freq[0], t inv_freq[1], ...]`
//! (each twice); with both rotaries the position part (node index `i`, or the neighbour's
//! index `j`) comes first, then the distance part (`float32(100 |r_ij|)`, 0 for the node's own
//! query and self key). The first `R = len(angles)` channels of a head vector `t` become
//! `t cos(a) + rotate_half(t) sin(a)`, `rotate_half(t) = (-t_1, -t_3, ..., -t_(R-1), t_0, t_2,
//! ..., t_(R-2))` over those channels; the rest are unchanged. Null and global keys are not
//! rotated.

use luminal::prelude::symbolic::Expression;

use super::graph::{constant, dims, expand_at, mm, reshape, T2, T3};
use crate::exec::{InputKind, Session};
use crate::Error;

/// `d = dim_head / (position + rel_dist)`, the channels each rotary part is sized for (0 without
/// parts).
fn part_width(dim_head: usize, position: bool, rel_dist: bool) -> usize {
    dim_head
        .checked_div(usize::from(position) + usize::from(rel_dist))
        .unwrap_or(0)
}

/// The frequencies of the rotary embeddings of a model (`rotary_pos_emb.inv_freq`) and
/// which parts they rotate by (module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct RotaryEmbedding {
    /// `inv_freq[f]`, `ceil(d / 2)` of them.
    pub inv_freq: Vec<f64>,
    /// Rotate by the node index (`rotary_position`).
    pub position: bool,
    /// Rotate by `100 |r_ij|` (`rotary_rel_dist`).
    pub rel_dist: bool,
}

impl RotaryEmbedding {
    /// The library's fresh frequencies for heads of `dim_head` channels: `d = dim_head /
    /// (position + rel_dist)`, `inv_freq[f] = 10000^(-2f / d)`.
    ///
    /// # Errors
    /// `InvalidParameter` if neither part is on or `d` is 0.
    pub fn new(dim_head: usize, position: bool, rel_dist: bool) -> Result<Self, Error> {
        let d = part_width(dim_head, position, rel_dist);
        if d == 0 {
            return Err(Error::InvalidParameter {
                what: "rotary embedding channels per part (dim_head / number of rotaries)",
                expected: "at least 1",
                found: d as f64,
            });
        }
        let inv_freq = (0..d.div_ceil(2))
            .map(|f| 10000f64.powf(-((2 * f) as f64) / d as f64))
            .collect();
        Ok(RotaryEmbedding {
            inv_freq,
            position,
            rel_dist,
        })
    }

    /// The number of `inv_freq` entries of heads of `dim_head` channels (the checkpoint shape
    /// of `rotary_pos_emb.inv_freq`).
    pub fn frequencies(dim_head: usize, position: bool, rel_dist: bool) -> usize {
        part_width(dim_head, position, rel_dist).div_ceil(2)
    }

    /// The angles of a key or query at node index `pos` and edge length `dist` (module doc).
    pub fn angles(&self, pos: usize, dist: f64) -> Vec<f64> {
        let mut out = Vec::new();
        let mut part = |t: f64| {
            for f in &self.inv_freq {
                out.push(t * f);
                out.push(t * f);
            }
        };
        if self.position {
            part(f64::from(pos as f32));
        }
        if self.rel_dist {
            part(f64::from((dist * 100.0) as f32));
        }
        out
    }

    /// The rotated channels `R` of a head of `dim_head` channels.
    pub fn rotated(&self, dim_head: usize) -> usize {
        let parts = usize::from(self.position) + usize::from(self.rel_dist);
        (2 * self.inv_freq.len() * parts).min(dim_head)
    }

    /// Rotates a head vector `t` in place by `angles` (module doc).
    pub fn apply(angles: &[f64], t: &mut [f64]) {
        let r = angles.len().min(t.len());
        let half = r / 2;
        let orig: Vec<f64> = t[..r].to_vec();
        for (i, v) in t[..r].iter_mut().enumerate() {
            let partner = if i < half {
                -orig[2 * i + 1]
            } else {
                orig[2 * (i - half)]
            };
            *v = orig[i] * angles[i].cos() + partner * angles[i].sin();
        }
    }

    /// `cos` and `sin` of the angles of each `(pos, dist)`, `dim_head` values a row (1 and 0
    /// past the rotated channels), row-major as [`RotaryAngles`] takes them.
    pub fn cos_sin(
        &self,
        dim_head: usize,
        rows: impl Iterator<Item = (usize, f64)>,
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (pos, dist) in rows {
            let a = self.angles(pos, dist);
            for c in 0..dim_head {
                match a.get(c) {
                    Some(&v) => {
                        cos.push(v.cos() as f32);
                        sin.push(v.sin() as f32);
                    }
                    None => {
                        cos.push(1.0);
                        sin.push(0.0);
                    }
                }
            }
        }
        (cos, sin)
    }

    /// The matrix `P [dim_head, dim_head]` with `t P = rotate_half(t)` on the first `rotated`
    /// channels and 0 past them, row-major.
    pub fn half_matrix(dim_head: usize, rotated: usize) -> Vec<f32> {
        let r = rotated.min(dim_head);
        let half = r / 2;
        let mut p = vec![0.0f32; dim_head * dim_head];
        for i in 0..r {
            if i < half {
                p[(2 * i + 1) * dim_head + i] = -1.0;
            } else {
                p[2 * (i - half) * dim_head + i] = 1.0;
            }
        }
        p
    }
}

/// The rotary angles of a graph as inputs: `cos`, `sin` per node (`[N, dim_head]`: the node's
/// own position, distance 0; for queries and self keys and values) and per edge (`[E,
/// dim_head]`: the source's position, the edge's length; for neighbour keys and values), and
/// the constant `rotate_half` matrix. Put on the edge graph, degree 0 of every
/// attention layer over the graph is rotated ([`super::EdgeGraph::rotary`]).
#[derive(Debug, Clone, Copy)]
pub struct RotaryAngles {
    /// `cos` of the nodes' angles `[N, dim_head]`.
    pub node_cos: T2,
    /// `sin` of the nodes' angles `[N, dim_head]`.
    pub node_sin: T2,
    /// `cos` of the edges' angles `[E, dim_head]`.
    pub edge_cos: T2,
    /// `sin` of the edges' angles `[E, dim_head]`.
    pub edge_sin: T2,
    /// `P [dim_head, dim_head]` ([`RotaryEmbedding::half_matrix`]).
    pub half: T2,
}

impl RotaryAngles {
    /// Inputs `<name>.node_cos`, `<name>.node_sin` (`[n, dim_head]`), `<name>.edge_cos`,
    /// `<name>.edge_sin` (`[e, dim_head]`), filled from [`RotaryEmbedding::cos_sin`], and the
    /// constant `<name>.half` for `rotated` channels.
    ///
    /// # Errors
    /// Those of `Session::set_weight`.
    pub fn input(
        s: &mut Session,
        name: &str,
        dim_head: usize,
        rotated: usize,
    ) -> Result<Self, Error> {
        let mut declare = |part: &str, rows: char| -> T2 {
            s.input_with_shape(
                &format!("{name}.{part}"),
                InputKind::Values,
                &[rows.into(), dim_head.into()],
            )
        };
        let (node_cos, node_sin) = (declare("node_cos", 'n'), declare("node_sin", 'n'));
        let (edge_cos, edge_sin) = (declare("edge_cos", 'e'), declare("edge_sin", 'e'));
        let half = constant(
            s,
            &format!("{name}.half"),
            RotaryEmbedding::half_matrix(dim_head, rotated),
            &[dim_head, dim_head],
        )?;
        Ok(RotaryAngles {
            node_cos,
            node_sin,
            edge_cos,
            edge_sin,
            half,
        })
    }

    /// Rotates degree-0 rows `t [rows, heads dim_head, 1]` (every head's channels) by
    /// `cos`, `sin` (`[rows, dim_head]`, the same for every head): `t cos + (t P) sin`.
    pub fn rotate(&self, t: T3, cos: T2, sin: T2, heads: usize) -> T3 {
        let dh = dims(self.half)[0];
        let rows = dims(t)[0];
        let flat: T2 = reshape(t, &[rows * heads, dh]);
        let halves: T3 = reshape(mm(flat, self.half), &[rows, heads.into(), dh]);
        let t3: T3 = reshape(t, &[rows, heads.into(), dh]);
        let c: T3 = expand_at(cos, 1, heads);
        let s: T3 = expand_at(sin, 1, heads);
        reshape(
            t3 * c + halves * s,
            &[rows, Expression::from(heads) * dh, 1.into()],
        )
    }
}
