//! [`table_contract()`]: per-edge vector-times-matrix products against per-node tables,
//!
//! `out[e, f, g] = sum_r sum_k h[e, k] T_r[idx_r[e], g, k, f]`
//!
//! (`h [E, K]`, tables `T_r [N_r, G, K F]` with rows `(k, f)`, indices `idx_r [E]`, `-1` adds
//! nothing). It is the last layer of a radial network applied after the channel mixing
//! instead of before: with `R_e = W h_e` (`W [(f, c), k]`) and node features `x_j [c, g]`,
//! `sum_c R_e[f, c] x_j[c, g] = sum_k h_e[k] T_j[g, k, f]` with `T_j[g, k, f] = sum_c W[(f, c),
//! k] x_j[c, g]`, so no per-edge weight matrix `R_e [F, C]` is formed: per edge the cost is
//! `G K F` multiply-adds instead of `K F C` (the Equiformer's depthwise tensor product,
//! `layers::depthwise_tp`). [`table_contract_unfused`] builds the same from `gather` and batched
//! products, the reference the op is tested against.
//!
//! The CPU kernel (`cpu.rs`) takes the edges of each index array in order of their node (a
//! counting sort), so a node's table stays in cache for all its edges, and runs blocks of them
//! in parallel. There is no CUDA kernel: on a CUDA session the op runs on the host between
//! copies (the CUDA pass moves data across every edge between a host and a device op). There is
//! no vector-Jacobian product either: `autodiff::gradients` returns `NoGradient` on a path
//! through it, and the differentiable Equiformer builds the per-edge form
//! (`AlignedEdges::with_per_edge_radial_weights`).

mod cpu;

pub use cpu::TableContract;
use luminal::prelude::{symbolic::Expression, *};

use super::logical_dims;
use crate::layers::graph::X;

/// `out [E, F, G]` of the module doc from `h [E, K]` and `(table [N, G, K F], idx [E])` pairs.
///
/// `K`, `F` and `G` must be fixed numbers (`F` is the table's last axis over `K`); the
/// indices are f32 holding integers, `-1` (or out of range) contributes nothing. Returns
/// `None` without tables.
pub fn table_contract(
    h: GraphTensor<(X, X)>,
    tables: &[(GraphTensor<(X, X, X)>, GraphTensor<(X,)>)],
) -> Option<GraphTensor<(X, X, X)>> {
    let (t0, _) = tables.first()?;
    let hd = logical_dims(&h.shape);
    let td = logical_dims(&t0.shape);
    let k = hd[1].to_usize().unwrap_or(1).max(1);
    let kf = td[2].to_usize().unwrap_or(0);
    let dims = [hd[0], Expression::from(kf / k), td[1]];
    let mut op = h
        .graph()
        .add_op(TableContract { k })
        .input(h.id, 0, h.shape);
    for (t, i) in tables {
        op = op.input(t.id, 0, t.shape).input(i.id, 0, i.shape);
    }
    Some(GraphTensor::from_id(
        op.finish(),
        ShapeTracker::new(&dims),
        h.graph_ref,
    ))
}

/// [`table_contract`] from luminal primitives and `gather`: each table's rows gathered per
/// edge (`[E, G, K F]`, the whole per-edge copy the fused op avoids), multiplied by `h` and
/// summed over `k`.
pub fn table_contract_unfused(
    h: GraphTensor<(X, X)>,
    tables: &[(GraphTensor<(X, X, X)>, GraphTensor<(X,)>)],
) -> Option<GraphTensor<(X, X, X)>> {
    use crate::layers::graph::{bmm, expand_at, permute, reshape};
    let hd = logical_dims(&h.shape);
    let mut acc: Option<GraphTensor<(X, X, X)>> = None;
    for (t, i) in tables {
        let td = logical_dims(&t.shape);
        let k = hd[1].to_usize().unwrap_or(1).max(1);
        let f = td[2].to_usize().unwrap_or(0) / k;
        let rows: GraphTensor<(X, X, X)> = super::gather3(*t, *i);
        // per edge [G, K, F] -> [K, F, G]; h as [E, 1, K] against it
        let per_edge: GraphTensor<(X, X, X, X)> =
            reshape(rows, &[hd[0], td[1], k.into(), f.into()]);
        let kfg: GraphTensor<(X, X, X)> = reshape(
            permute(per_edge, &[0, 2, 3, 1]),
            &[hd[0], k.into(), td[1] * f],
        );
        let h3: GraphTensor<(X, X, X)> = expand_at(h, 1, 1);
        let y: GraphTensor<(X, X, X)> = reshape(bmm(h3, kfg), &[hd[0], f.into(), td[1]]);
        acc = Some(match acc {
            None => y,
            Some(a) => a + y,
        });
    }
    acc
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng};
    use crate::exec::{IndexBound, InputKind, Session};
    use crate::layers::graph::X;
    use crate::Error;

    /// Two tables with missing indices, widths across the register block: the fused op, the
    /// unfused graph and a plain loop agree.
    #[test]
    fn table_contract_matches_gathered_products() -> Result<(), Error> {
        let mut r = rng();
        let (e, n, k) = (r.gen_range(1..90), r.gen_range(1..20), r.gen_range(1..12));
        let (f, g) = (r.gen_range(1..75), r.gen_range(1..4));
        let h = rand_vec(&mut r, e * k);
        let tabs = [rand_vec(&mut r, n * g * k * f), rand_vec(&mut r, n * g * k * f)];
        let idx: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect())
            .collect();
        let mut s = Session::new();
        let hx = s.input_with_shape::<(X, X)>("h", InputKind::Values, &[e.into(), k.into()]);
        let mut pairs = vec![];
        for q in 0..2 {
            let t = s.input_with_shape::<(X, X, X)>(
                &format!("t{q}"),
                InputKind::Values,
                &[n.into(), g.into(), (k * f).into()],
            );
            let i = s.input_with_shape::<(X,)>(
                &format!("i{q}"),
                InputKind::Indices {
                    bound: IndexBound::Fixed(n),
                    allow_missing: true,
                },
                &[e.into()],
            );
            pairs.push((t, i));
        }
        let fused = super::table_contract(hx, &pairs).ok_or(Error::Empty { what: "tables" })?;
        let plain =
            super::table_contract_unfused(hx, &pairs).ok_or(Error::Empty { what: "tables" })?;
        s.output("fused", fused);
        s.output("plain", plain);
        s.compile();
        s.set("h", h.clone(), &[e, k])?;
        for q in 0..2 {
            s.set(&format!("t{q}"), tabs[q].clone(), &[n, g, k * f])?;
            s.set(&format!("i{q}"), idx[q].clone(), &[e])?;
        }
        s.run()?;
        let mut want = vec![0.0f32; e * f * g];
        for q in 0..2 {
            for ei in 0..e {
                let j = idx[q][ei];
                if j < 0.0 {
                    continue;
                }
                let j = j as usize;
                for fi in 0..f {
                    for gi in 0..g {
                        let mut acc = 0.0;
                        for kk in 0..k {
                            acc += h[ei * k + kk] * tabs[q][((j * g + gi) * k + kk) * f + fi];
                        }
                        want[(ei * f + fi) * g + gi] += acc;
                    }
                }
            }
        }
        let (a, b) = (s.get("fused")?, s.get("plain")?);
        assert_eq!(a.shape, vec![e, f, g]);
        assert_eq!(b.shape, vec![e, f, g]);
        let (ea, eb) = (rel_err(&a.data, &want), rel_err(&b.data, &want));
        assert!(ea < 1e-5, "fused op: relative error {ea}");
        assert!(eb < 1e-5, "unfused graph: relative error {eb}");
        Ok(())
    }
}
