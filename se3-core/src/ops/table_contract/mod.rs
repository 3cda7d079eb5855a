//! [`table_contract()`]: a radial network's last layer applied after the channel mixing,
//!
//! `out[e, f, g] = sum_r sum_k h[e, k] T_r[idx_r[e], g, k, f]`,
//! `T_r[j, g, k, f] = sum_c x_r[j, c, g] W[c, k F + f]`
//!
//! (`h [E, K]` hidden units, `W [C, K F]`, node features `x_r [N, C, G]`, indices `idx_r [E]`,
//! `-1` adds nothing). With per-edge weights `R_e[f, c] = sum_k W[c, k F + f] h_e[k]` this is
//! `sum_r sum_c R_e[f, c] x_r[idx_r[e], c, g]` without forming `R_e [F, C]`: per edge the cost
//! is `G K F` multiply-adds instead of `K F C`, plus `G C K F` per node and index array for
//! its table (the Equiformer's depthwise tensor product, `layers::depthwise_tp`).
//! [`table_contract_unfused`] builds the same from a GEMM for all tables, `gather` and batched
//! products, the reference the op is tested against.
//!
//! The CPU kernel (`cpu.rs`) takes the edges of each index array in order of their node (a
//! counting sort); nodes run in parallel, each forming its table in thread-local scratch and
//! contracting it with its edges' hidden units, so no table of the whole graph is stored.
//! There is no CUDA kernel: on a CUDA session the op runs on the host between copies (the CUDA
//! pass moves data across every edge between a host and a device op). There is no
//! vector-Jacobian product either: `autodiff::gradients` returns `NoGradient` on a path
//! through it, and the differentiable Equiformer builds the per-edge form
//! (`AlignedEdges::with_per_edge_radial_weights`).

mod cpu;

pub use cpu::TableContract;
use luminal::prelude::{symbolic::Expression, *};

use super::logical_dims;
use crate::layers::graph::X;

/// Node features `x [N, C, G]` with the node `idx [E]` each edge reads.
pub type IndexedNodes = (GraphTensor<(X, X, X)>, GraphTensor<(X,)>);

/// `out [E, F, G]` of the module doc from `h [E, K]`, `w [C, K F]` and `(x [N, C, G], idx [E])`
/// pairs (all `x` of one `C` and `G`).
///
/// `K` and `F` must be fixed numbers (`F` is `w`'s last axis over `K`); the indices are f32
/// holding integers, `-1` (or out of range) contributes nothing. Returns `None` without
/// node features.
pub fn table_contract(
    h: GraphTensor<(X, X)>,
    w: GraphTensor<(X, X)>,
    nodes: &[IndexedNodes],
) -> Option<GraphTensor<(X, X, X)>> {
    let (x0, _) = nodes.first()?;
    let (hd, wd, xd) = (
        logical_dims(&h.shape),
        logical_dims(&w.shape),
        logical_dims(&x0.shape),
    );
    let k = hd[1].to_usize().unwrap_or(1).max(1);
    let kf = wd[1].to_usize().unwrap_or(0);
    let dims = [hd[0], Expression::from(kf / k), xd[2]];
    let mut op = h
        .graph()
        .add_op(TableContract { k })
        .input(h.id, 0, h.shape)
        .input(w.id, 0, w.shape);
    for (x, i) in nodes {
        op = op.input(x.id, 0, x.shape).input(i.id, 0, i.shape);
    }
    Some(GraphTensor::from_id(
        op.finish(),
        ShapeTracker::new(&dims),
        h.graph_ref,
    ))
}

/// [`table_contract`] from luminal primitives and `gather`: every node's table by one GEMM
/// (`[N, G, K F]`), gathered per edge (`[E, G, K F]`, the copies the fused op avoids),
/// multiplied by `h` and summed over `k`.
pub fn table_contract_unfused(
    h: GraphTensor<(X, X)>,
    w: GraphTensor<(X, X)>,
    nodes: &[IndexedNodes],
) -> Option<GraphTensor<(X, X, X)>> {
    use crate::layers::graph::{bmm, bmm_shared, expand_at, permute, reshape};
    let hd = logical_dims(&h.shape);
    let k = hd[1].to_usize().unwrap_or(1).max(1);
    let f = logical_dims(&w.shape)[1].to_usize().unwrap_or(0) / k;
    let mut acc: Option<GraphTensor<(X, X, X)>> = None;
    for (x, i) in nodes {
        let g = logical_dims(&x.shape)[2];
        let tables = bmm_shared(permute(*x, &[0, 2, 1]), w);
        let rows: GraphTensor<(X, X, X)> = super::gather3(tables, *i);
        // per edge [G, K, F] -> [K, F G]; h as [E, 1, K] against it
        let per_edge: GraphTensor<(X, X, X, X)> = reshape(rows, &[hd[0], g, k.into(), f.into()]);
        let kfg: GraphTensor<(X, X, X)> =
            reshape(permute(per_edge, &[0, 2, 3, 1]), &[hd[0], k.into(), g * f]);
        let h3: GraphTensor<(X, X, X)> = expand_at(h, 1, 1);
        let y: GraphTensor<(X, X, X)> = reshape(bmm(h3, kfg), &[hd[0], f.into(), g]);
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

    /// Two index arrays with missing entries, widths across the register blocks (edges of a
    /// node by fours, columns by vectors with a padded tail): the fused op, the unfused graph
    /// and a plain loop agree, on several random draws.
    #[test]
    fn table_contract_matches_gathered_products() -> Result<(), Error> {
        let mut r = rng();
        for _ in 0..6 {
            one_draw(&mut r)?;
        }
        Ok(())
    }

    fn one_draw(r: &mut rand::rngs::StdRng) -> Result<(), Error> {
        let (e, n, k) = (r.gen_range(1..120), r.gen_range(1..20), r.gen_range(1..70));
        let (f, g, c) = (r.gen_range(1..75), r.gen_range(1..7), r.gen_range(1..9));
        let h = rand_vec(r, e * k);
        let w = rand_vec(r, c * k * f);
        let xs = [rand_vec(r, n * c * g), rand_vec(r, n * c * g)];
        let idx: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect())
            .collect();
        let mut s = Session::new();
        let hx = s.input_with_shape::<(X, X)>("h", InputKind::Values, &[e.into(), k.into()]);
        let wx = s.input_with_shape::<(X, X)>("w", InputKind::Values, &[c.into(), (k * f).into()]);
        let mut pairs = vec![];
        for q in 0..2 {
            let x = s.input_with_shape::<(X, X, X)>(
                &format!("x{q}"),
                InputKind::Values,
                &[n.into(), c.into(), g.into()],
            );
            let i = s.input_with_shape::<(X,)>(
                &format!("i{q}"),
                InputKind::Indices {
                    bound: IndexBound::Fixed(n),
                    allow_missing: true,
                },
                &[e.into()],
            );
            pairs.push((x, i));
        }
        let none = Error::Empty {
            what: "node features",
        };
        let fused = super::table_contract(hx, wx, &pairs).ok_or(none)?;
        let none = Error::Empty {
            what: "node features",
        };
        let plain = super::table_contract_unfused(hx, wx, &pairs).ok_or(none)?;
        s.output("fused", fused);
        s.output("plain", plain);
        s.compile();
        s.set("h", h.clone(), &[e, k])?;
        s.set("w", w.clone(), &[c, k * f])?;
        for (q, (x, i)) in xs.iter().zip(&idx).enumerate() {
            s.set(&format!("x{q}"), x.clone(), &[n, c, g])?;
            s.set(&format!("i{q}"), i.clone(), &[e])?;
        }
        s.run()?;
        let mut want = vec![0.0f32; e * f * g];
        for (x, ids) in xs.iter().zip(&idx) {
            for (ei, &j) in ids.iter().enumerate() {
                if j < 0.0 {
                    continue;
                }
                let j = j as usize;
                for fi in 0..f {
                    for gi in 0..g {
                        let mut acc = 0.0;
                        for kk in 0..k {
                            for ci in 0..c {
                                acc += h[ei * k + kk]
                                    * x[(j * c + ci) * g + gi]
                                    * w[ci * k * f + kk * f + fi];
                            }
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
        assert!(
            ea < 1e-5,
            "fused op: relative error {ea} (e {e} n {n} k {k} f {f} g {g} c {c})"
        );
        assert!(eb < 1e-5, "unfused graph: relative error {eb}");
        Ok(())
    }
}
