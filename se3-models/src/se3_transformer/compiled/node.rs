//! Node-wise layers on the graph: LinearSE3 and NormSE3 as the se3-core [`LinearLayer`] and
//! [`NormLayer`] (optionally one head's block of a linear layer's output or input channels), the
//! residual, and `torch.nn.Linear` / SiLU for the EGNN MLPs.

use se3_core::fiber::{DegreeSpec, FiberSpec};
use se3_core::layers::{FeatureTensors, LinearLayer, NormActivation, NormLayer, NormScale};

use super::ctx::{Ctx, GFeats};
use crate::se3_transformer::features::{LinearSe3, Mat};
use crate::se3_transformer::norm::{NormParam, NormSe3};
use crate::Error;
use se3_core::layers::graph::{dims, expand_at, mm, T1, T2, T3, X};

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

/// The run-time fiber of graph features (channels and degrees read from the tensor shapes).
fn spec_of(x: &GFeats) -> Result<FiberSpec, Error> {
    let degrees = x
        .iter()
        .map(|(&l, &t)| {
            let channels = dims(t)[1].to_usize().ok_or(Error::NotCompiled {
                option: "a channel count that is not a number",
            })?;
            Ok(DegreeSpec::new(l, channels, None))
        })
        .collect::<Result<_, Error>>()?;
    Ok(FiberSpec::new(degrees)?)
}

/// `x` as se3-core feature tensors (rows are nodes or edges, `[rows, c, 2l + 1]`).
fn to_tensors(x: &GFeats) -> Result<FeatureTensors<X>, Error> {
    Ok(FeatureTensors::new(
        spec_of(x)?,
        x.values().copied().collect(),
    )?)
}

/// se3-core feature tensors back as a degree map.
fn from_tensors(f: &FeatureTensors<X>) -> GFeats {
    f.spec()
        .degrees()
        .iter()
        .zip(f.tensors())
        .map(|(d, &t)| (d.l, t))
        .collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// LinearSE3 on the degrees `x` and `lin` share, as an se3-core [`LinearLayer`]; optionally only
/// output columns `start..start + count` of every degree (one head's share).
pub(crate) fn linear(
    ctx: &mut Ctx<'_>,
    lin: &LinearSe3,
    x: &GFeats,
    cols: Option<(usize, usize)>,
) -> Result<GFeats, Error> {
    let (mut fin, mut fout, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut xs = GFeats::new();
    for (l, w) in &lin.weights {
        let Some(&xl) = x.get(l) else { continue };
        let (start, count) = cols.unwrap_or((0, w.cols));
        fin.push(DegreeSpec::new(*l, w.rows, None));
        fout.push(DegreeSpec::new(*l, count, None));
        weights.push(f32s(&columns(w, start, count)));
        xs.insert(*l, xl);
    }
    if xs.is_empty() {
        return Ok(GFeats::new());
    }
    let layer =
        LinearLayer::from_values(&FiberSpec::new(fin)?, &FiberSpec::new(fout)?, weights, None)?;
    let prefix = ctx.prefix();
    Ok(from_tensors(&layer.build(
        ctx.s,
        &prefix,
        &to_tensors(&xs)?,
    )?))
}

/// LinearSE3 of one degree restricted to input rows `start..start + count` (a head's share of
/// `to_out`), as an se3-core [`LinearLayer`].
pub(crate) fn linear_rows(
    ctx: &mut Ctx<'_>,
    w: &Mat,
    x: T3,
    start: usize,
    count: usize,
) -> Result<T3, Error> {
    let l = dims(x)[2].to_usize().map_or(0, |m| m / 2);
    let layer = LinearLayer::from_values(
        &FiberSpec::new(vec![DegreeSpec::new(l, count, None)])?,
        &FiberSpec::new(vec![DegreeSpec::new(l, w.cols, None)])?,
        vec![f32s(&rows(w, start, count))],
        None,
    )?;
    let prefix = ctx.prefix();
    let input = FeatureTensors::new(layer.fiber_in().clone(), vec![x])?;
    Ok(layer.build(ctx.s, &prefix, &input)?.tensors()[0])
}

/// NormSE3 as an se3-core [`NormLayer`]: `y = phi(|x| s) x / |x|` per channel, `s` a learned
/// scale or the gate `|x| W`; `phi` GELU (identity for the final norm).
pub(crate) fn norm(ctx: &mut Ctx<'_>, nrm: &NormSe3, x: &GFeats) -> Result<GFeats, Error> {
    let spec = spec_of(x)?;
    let mut scale = NormScale::PerChannel;
    let mut values = Vec::new();
    for &l in x.keys() {
        match nrm.params.get(&l) {
            Some(NormParam::Scale(s)) => values.push(f32s(s)),
            Some(NormParam::Gate(w)) => {
                scale = NormScale::Gated;
                values.push(f32s(&w.data));
            }
            None => {
                return Err(Error::MissingKey {
                    key: format!("transform.{l}"),
                    expected: vec![],
                })
            }
        }
    }
    let activation = if nrm.identity {
        NormActivation::Identity
    } else {
        NormActivation::Gelu
    };
    let layer = NormLayer::from_values(&spec, scale, activation, values)?;
    let prefix = ctx.prefix();
    Ok(from_tensors(&layer.build(
        ctx.s,
        &prefix,
        &to_tensors(x)?,
    )?))
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
