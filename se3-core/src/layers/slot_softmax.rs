//! The softmax of SE(3)-Transformer attention over a row's slots, shared by every graph form of
//! that attention ([`super::AttentionLayer`] and the compiled model in `se3-models`).
//!
//! A row (a node, or a node and a head) attends over
//!
//! - its `k` neighbour slots, logits `l_ij` (`[rows, k]`), each valid or not (`valid [rows, k]`,
//!   1 or 0: a missing neighbour);
//! - single slots of its own (`[rows]` each: the node's self key, the learned null key);
//! - shared slots every row sees (`[rows, g]`: the global keys).
//!
//! With `z_ij = l_ij` on valid slots and `-f32::MAX` on invalid ones (`l valid + (valid - 1)
//! MAX`, so a masked logit takes no part in the gradient either), `m_i` the maximum over all
//! of the row's slots and `S_i = sum_j e^{z_ij - m_i} + sum_s e^{l_is - m_i} + sum_g
//! e^{l_ig - m_i}`, every slot's weight is `e^{logit - m_i} / S_i`. A row whose neighbours are
//! all invalid and that has no other slot weighs them uniformly (`z - m = 0`), as
//! se3-transformer-pytorch's `masked_fill(-finfo.max)` does.

use super::graph::{dims, expand_at, max_axis, sum_axis, T1, T2, X};

/// Logits of one softmax over slots (module doc).
#[derive(Debug, Clone, Copy)]
pub struct SlotLogits<'a> {
    /// Neighbour slots `[rows, k]`.
    pub neighbours: T2,
    /// 1 for a valid neighbour slot, 0 for a missing one (`[rows, k]`); `None`: all valid.
    pub valid: Option<T2>,
    /// Single slots of each row (`[rows]` each).
    pub singles: &'a [T1],
    /// Slots shared by all rows (`[rows, g]`).
    pub shared: Option<T2>,
}

/// The weights of [`SlotLogits`]' slots, same layout; they sum to 1 over each row.
#[derive(Debug, Clone)]
pub struct SlotWeights {
    /// Neighbour slots `[rows, k]` (0 at invalid ones unless all are invalid).
    pub neighbours: T2,
    /// Single slots, in the order given.
    pub singles: Vec<T1>,
    /// Shared slots `[rows, g]`.
    pub shared: Option<T2>,
}

/// The numerically stable softmax over all slots of each row (module doc).
pub fn slot_softmax(l: SlotLogits<'_>) -> SlotWeights {
    let k = dims(l.neighbours)[1];
    let z = match l.valid {
        Some(v) => l.neighbours * v + (v + (-1.0)) * f32::MAX,
        None => l.neighbours,
    };
    let mut mx: T1 = max_axis(z, 1);
    for &s in l.singles {
        mx = mx.max(s);
    }
    if let Some(g) = l.shared {
        mx = mx.max(max_axis(g, 1));
    }
    let ex = (z - expand_at::<_, (X, X)>(mx, 1, k)).exp();
    let mut total: T1 = sum_axis(ex, 1);
    let singles: Vec<T1> = l.singles.iter().map(|&s| (s - mx).exp()).collect();
    for &e in &singles {
        total += e;
    }
    let shared = l.shared.map(|g| {
        let width = dims(g)[1];
        (g - expand_at::<_, (X, X)>(mx, 1, width)).exp()
    });
    if let Some(ge) = shared {
        total += sum_axis::<_, (X,)>(ge, 1);
    }
    let inv = total.recip();
    SlotWeights {
        neighbours: ex * expand_at::<_, (X, X)>(inv, 1, k),
        singles: singles.into_iter().map(|e| e * inv).collect(),
        shared: shared.map(|ge| {
            let width = dims(ge)[1];
            ge * expand_at::<_, (X, X)>(inv, 1, width)
        }),
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::{slot_softmax, SlotLogits};
    use crate::exec::tests::{rand_vec, rng};
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::{T1, T2};
    use crate::Error;

    /// The weights against a plain softmax of each row's slots written out in f64, with
    /// random missing neighbours (and rows with none valid), singles and shared slots.
    #[test]
    fn slot_weights_are_the_softmax_of_all_slots_of_a_row() -> Result<(), Error> {
        let mut r = rng();
        let (rows, k, g, ns) = (
            r.gen_range(3..9),
            r.gen_range(1..6),
            r.gen_range(1..4),
            r.gen_range(0..3),
        );
        let nb = rand_vec(&mut r, rows * k);
        let mut valid: Vec<f32> = (0..rows * k)
            .map(|_| if r.gen_range(0..3) == 0 { 0.0 } else { 1.0 })
            .collect();
        valid[..k].fill(0.0); // row 0 has no valid neighbour
        let singles: Vec<Vec<f32>> = (0..ns).map(|_| rand_vec(&mut r, rows)).collect();
        let shared = rand_vec(&mut r, rows * g);
        for with_shared in [false, true] {
            let mut s = Session::new();
            let l: T2 = s.input_with_shape("l", InputKind::Values, &[rows.into(), k.into()]);
            let v: T2 = s.input_with_shape("v", InputKind::Values, &[rows.into(), k.into()]);
            let st: Vec<T1> = (0..ns)
                .map(|i| s.input_with_shape(&format!("s{i}"), InputKind::Values, &[rows.into()]))
                .collect();
            let gt: T2 = s.input_with_shape("g", InputKind::Values, &[rows.into(), g.into()]);
            let w = slot_softmax(SlotLogits {
                neighbours: l,
                valid: Some(v),
                singles: &st,
                shared: with_shared.then_some(gt),
            });
            s.output("w", w.neighbours);
            for (i, t) in w.singles.iter().enumerate() {
                s.output(&format!("ws{i}"), *t);
            }
            if let Some(t) = w.shared {
                s.output("wg", t);
            }
            s.compile();
            s.set("l", nb.clone(), &[rows, k])?;
            s.set("v", valid.clone(), &[rows, k])?;
            for (i, d) in singles.iter().enumerate() {
                s.set(&format!("s{i}"), d.clone(), &[rows])?;
            }
            s.set("g", shared.clone(), &[rows, g])?;
            s.run()?;
            let got_nb = s.get("w")?.data;
            let got_s: Vec<Vec<f32>> = (0..ns)
                .map(|i| s.get(&format!("ws{i}")).map(|t| t.data))
                .collect::<Result<_, _>>()?;
            let got_g = if with_shared {
                Some(s.get("wg")?.data)
            } else {
                None
            };
            for i in 0..rows {
                let row_valid: Vec<bool> = (0..k).map(|j| valid[i * k + j] > 0.5).collect();
                let none_valid = !row_valid.iter().any(|&b| b);
                // slots: (logit, weight got); invalid neighbours join only if none is valid
                // and the row has no other slot, then uniformly
                let alone = none_valid && ns == 0 && !with_shared;
                let mut slots: Vec<(f64, f32)> = Vec::new();
                for j in 0..k {
                    if alone {
                        slots.push((0.0, got_nb[i * k + j]));
                    } else if row_valid[j] {
                        slots.push((nb[i * k + j] as f64, got_nb[i * k + j]));
                    } else {
                        assert!(got_nb[i * k + j].abs() < 1e-30, "masked slot weighted");
                    }
                }
                for (d, w) in singles.iter().zip(&got_s) {
                    slots.push((d[i] as f64, w[i]));
                }
                if let Some(wg) = &got_g {
                    for c in 0..g {
                        slots.push((shared[i * g + c] as f64, wg[i * g + c]));
                    }
                }
                let m = slots.iter().map(|s| s.0).fold(f64::MIN, f64::max);
                let total: f64 = slots.iter().map(|s| (s.0 - m).exp()).sum();
                for (logit, w) in slots {
                    let want = (logit - m).exp() / total;
                    assert!(
                        (w as f64 - want).abs() < 1e-6,
                        "row {i}: weight {w} against {want}"
                    );
                }
            }
        }
        Ok(())
    }
}
