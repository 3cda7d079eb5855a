//! N-th degree neighbours of a sparse adjacency, as se3-transformer-pytorch computes them for
//! `num_adj_degrees`: starting from `A` (0/1), for `d = 2..=degrees`:
//! `next = (A A > 0)`, entries where `next` differs from `A` get the value `d`, then `A = next`.
//! The result holds 1 for direct bonds, `d` for pairs first reached at step `d`, 0 otherwise.
//! Note that, as in the reference, step `d` squares the previous reachability matrix (so step
//! 3 reaches paths of length up to 4), and the diagonal is set at step 2 for every node with a
//! neighbour; this op reproduces that convention exactly.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::AdjacencyDegrees;
use luminal::prelude::*;

use super::logical_dims;

/// Degree indices of `adj (N, N)` (0/1 entries) up to `degrees`; output `(N, N)`.
pub fn adjacency_degrees<N: Dimension>(
    adj: GraphTensor<(N, N)>,
    degrees: usize,
) -> GraphTensor<(N, N)> {
    let dims = logical_dims(&adj.shape);
    let id = adj
        .graph()
        .add_op(AdjacencyDegrees { degrees })
        .input(adj.id, 0, adj.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), adj.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::Error;

    /// The reference recurrence with dense integer matrices.
    fn reference(a: &[f32], n: usize, degrees: usize) -> Vec<f32> {
        let mut cur: Vec<u8> = a.iter().map(|v| (*v != 0.0) as u8).collect();
        let mut out: Vec<f32> = cur.iter().map(|v| *v as f32).collect();
        for d in 2..=degrees {
            let mut next = vec![0u8; n * n];
            for i in 0..n {
                for j in 0..n {
                    let s: u32 = (0..n)
                        .map(|k| (cur[i * n + k] * cur[k * n + j]) as u32)
                        .sum();
                    next[i * n + j] = (s > 0) as u8;
                }
            }
            for p in 0..n * n {
                if next[p] != cur[p] {
                    out[p] = d as f32;
                }
            }
            cur = next;
        }
        out
    }

    #[test]
    fn adjacency_degrees_follow_the_reference_recurrence_on_a_chain_and_random_graphs(
    ) -> Result<(), Error> {
        let mut r = rng();
        // A chain 0-1-2-3-4: degree 2 reaches i±2 (and the diagonal), degree 3 reaches i±3, i±4.
        let n = 5;
        let mut chain = vec![0.0f32; n * n];
        for i in 0..n - 1 {
            chain[i * n + i + 1] = 1.0;
            chain[(i + 1) * n + i] = 1.0;
        }
        let mut graphs = vec![(chain, n, 3)];
        for _ in 0..3 {
            let n = r.gen_range(1..12);
            let a: Vec<f32> = (0..n * n)
                .map(|_| if r.gen_bool(0.2) { 1.0 } else { 0.0 })
                .collect();
            graphs.push((a, n, r.gen_range(1..4)));
        }
        for (a, n, degrees) in graphs {
            let mut s = Session::new();
            let t = s.input::<(Dyn<'n'>, Dyn<'n'>)>("a", InputKind::Mask);
            s.output("d", super::adjacency_degrees(t, degrees));
            s.set("a", a.clone(), &[n, n])?;
            s.run()?;
            assert_eq!(s.get("d")?.data, reference(&a, n, degrees));
        }
        Ok(())
    }
}
