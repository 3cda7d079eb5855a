//! Node-wise layers on the graph: LinearSE3 (per degree, optionally a block of its output or input
//! channels), NormSE3, the residual, and `torch.nn.Linear` / SiLU for the EGNN MLPs.

use super::ctx::{Ctx, GFeats};
use super::tensor::{bmm_shared, dims, expand_at, gelu, mm, permute, sum_axis, T1, T2, T3, X};
use crate::se3_transformer::features::{LinearSe3, Mat};
use crate::se3_transformer::norm::{NormParam, NormSe3};
use crate::Error;

/// `y[n, o, m] = sum_i x[n, i, m] W[i, o]` for a `[c_in, c_out]` weight on the graph.
pub(crate) fn linear_block(x: T3, w: T2) -> T3 {
    permute(bmm_shared(permute(x, &[0, 2, 1]), w), &[0, 2, 1])
}

/// Columns `cols` of a row-major `[rows, cols_total]` matrix.
pub(crate) fn columns(m: &Mat, start: usize, count: usize) -> Vec<f64> {
    (0..m.rows)
        .flat_map(|r| m.data[r * m.cols + start..r * m.cols + start + count].to_vec())
        .collect()
}

/// Rows `start..start + count` of a row-major `[rows, cols]` matrix.
pub(crate) fn rows(m: &Mat, start: usize, count: usize) -> Vec<f64> {
    m.data[start * m.cols..(start + count) * m.cols].to_vec()
}

/// LinearSE3 on the degrees `x` and `lin` share; optionally only output columns
/// `start..start + count` of every degree.
pub(crate) fn linear(
    ctx: &mut Ctx<'_>,
    lin: &LinearSe3,
    x: &GFeats,
    cols: Option<(usize, usize)>,
) -> Result<GFeats, Error> {
    let mut out = GFeats::new();
    for (l, w) in &lin.weights {
        let Some(&xl) = x.get(l) else { continue };
        let (start, count) = cols.unwrap_or((0, w.cols));
        let wt: T2 = ctx.constant(&columns(w, start, count), &[w.rows, count])?;
        out.insert(*l, linear_block(xl, wt));
    }
    Ok(out)
}

/// LinearSE3 restricted to input rows `start..start + count` (a head's share of `to_out`).
pub(crate) fn linear_rows(
    ctx: &mut Ctx<'_>,
    w: &Mat,
    x: T3,
    start: usize,
    count: usize,
) -> Result<T3, Error> {
    let wt: T2 = ctx.constant(&rows(w, start, count), &[count, w.cols])?;
    Ok(linear_block(x, wt))
}

/// NormSE3: `y = phi(|x| s) x / |x|` per channel (norm over the 2l + 1 components, floored at
/// 1e-12), `s` a learned scale or the gate `|x| W`; `phi` GELU (identity for the final norm).
pub(crate) fn norm(ctx: &mut Ctx<'_>, nrm: &NormSe3, x: &GFeats) -> Result<GFeats, Error> {
    let mut out = GFeats::new();
    for (&l, &xl) in x {
        let p = nrm.params.get(&l).ok_or(Error::MissingKey {
            key: format!("transform.{l}"),
            expected: vec![],
        })?;
        let d = dims(xl);
        let norms: T2 = sum_axis::<_, (X, X)>(xl * xl, 2).sqrt().max_f32(1e-12);
        let z = match p {
            NormParam::Scale(s) => {
                let st: T1 = ctx.constant(s, &[s.len()])?;
                norms * expand_at::<_, (X, X)>(st, 0, d[0])
            }
            NormParam::Gate(w) => {
                let wt: T2 = ctx.constant(&w.data, &[w.rows, w.cols])?;
                norms * mm(norms, wt)
            }
        };
        let f = if nrm.identity { z } else { gelu(z) };
        let ratio = f / norms;
        out.insert(l, xl * expand_at::<_, (X, X, X)>(ratio, 2, d[2]));
    }
    Ok(out)
}

/// `a + b` on the degrees of `a` (ResidualSE3).
pub(crate) fn residual(a: &GFeats, b: &GFeats) -> GFeats {
    a.iter()
        .map(|(&l, &t)| match b.get(&l) {
            Some(&u) => (l, t + u),
            None => (l, t),
        })
        .collect()
}

/// `x W^T + b` for a `torch.nn.Linear` (`w` of shape `[n_out, n_in]`) on rows `[rows, n_in]`,
/// optionally only input columns `cols` of `w` (a block of a concatenated input), without bias.
pub(crate) fn dense(
    ctx: &mut Ctx<'_>,
    d: &crate::se3_transformer::radial::Dense,
    x: T2,
    cols: Option<(usize, usize)>,
    bias: bool,
) -> Result<T2, Error> {
    let (start, count) = cols.unwrap_or((0, d.n_in));
    let mut wt = vec![0.0; count * d.n_out];
    for o in 0..d.n_out {
        for i in 0..count {
            wt[i * d.n_out + o] = d.w[o * d.n_in + start + i];
        }
    }
    let w: T2 = ctx.constant(&wt, &[count, d.n_out])?;
    let y = mm(x, w);
    if bias {
        let b: T1 = ctx.constant(&d.b, &[d.n_out])?;
        let rows = dims(y)[0];
        Ok(y + expand_at::<_, (X, X)>(b, 0, rows))
    } else {
        Ok(y)
    }
}

pub(crate) fn silu(x: T2) -> T2 {
    x * x.sigmoid()
}
