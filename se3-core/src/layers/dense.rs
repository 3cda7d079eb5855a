//! `DenseLinear`: `torch.nn.Linear` on plain (invariant) row vectors.

use luminal::prelude::*;

use super::graph::{dims, expand_at, mm, transpose, Param, ParamSource, X};
use crate::exec::Session;
use crate::Error;

/// An affine map of row vectors, `y = x W^T + b`, with PyTorch's layout: `W` is
/// `(out, in)` (checkpoint key `<prefix>weight`), `b` is `(out,)` (`<prefix>bias`).
///
/// It acts on invariant channels only (rows are nodes or edges, columns are scalars), so it
/// commutes with every rotation, reflection and translation of the coordinates.
#[derive(Debug, Clone)]
pub struct DenseLinear {
    /// `(out, in)`.
    pub weight: Param,
    /// `(out,)`, if the layer has a bias.
    pub bias: Option<Param>,
}

impl DenseLinear {
    /// Reads `<prefix>weight` `(out, in)` and, if `bias`, `<prefix>bias` `(out,)`.
    ///
    /// # Errors
    /// Those of `src` (`MissingKey`, `WrongShape`) and `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Self, Error> {
        let weight = Param::load(src, format!("{prefix}weight"), vec![output, input])?;
        let bias = if bias {
            Some(Param::load(src, format!("{prefix}bias"), vec![output])?)
        } else {
            None
        };
        Ok(DenseLinear { weight, bias })
    }

    /// Input width.
    pub fn input(&self) -> usize {
        self.weight.shape.get(1).copied().unwrap_or(0)
    }

    /// Output width.
    pub fn output(&self) -> usize {
        self.weight.shape.first().copied().unwrap_or(0)
    }

    /// The layer restricted to input columns `start..end` (no bias): the term of those
    /// columns when the input is a concatenation, `[a, b] W^T = a W_a^T + b W_b^T`.
    ///
    /// # Errors
    /// `ShapeMismatch` if the range is outside the input width.
    pub fn columns(&self, start: usize, end: usize) -> Result<DenseLinear, Error> {
        let (out, input) = (self.output(), self.input());
        if start > end || end > input {
            return Err(Error::ShapeMismatch {
                what: format!("columns {start}..{end} of `{}`", self.weight.key),
                expected: vec![out, input],
                found: vec![out, end],
            });
        }
        let data = (0..out)
            .flat_map(|o| {
                self.weight.data[o * input + start..o * input + end]
                    .iter()
                    .copied()
            })
            .collect();
        Ok(DenseLinear {
            weight: Param::new(
                format!("{}[{start}..{end}]", self.weight.key),
                vec![out, end - start],
                data,
            )?,
            bias: None,
        })
    }

    /// The layer without its bias (`W` only).
    pub fn without_bias(&self) -> DenseLinear {
        DenseLinear {
            weight: self.weight.clone(),
            bias: None,
        }
    }

    /// `x W^T + b` for `x` of shape `[rows, in]`; the weights become session weights
    /// `<prefix><key>`.
    ///
    /// # Errors
    /// `ShapeMismatch` if `x` is not `in` wide; those of `Session::set_weight`.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: GraphTensor<(X, X)>,
    ) -> Result<GraphTensor<(X, X)>, Error> {
        let d = dims(x);
        if d[1].to_usize() != Some(self.input()) {
            return Err(Error::ShapeMismatch {
                what: format!("input of `{prefix}{}`", self.weight.key),
                expected: vec![self.input()],
                found: vec![d[1].to_usize().unwrap_or(0)],
            });
        }
        let w: GraphTensor<(X, X)> = self.weight.declare(s, prefix)?;
        let y = mm(x, transpose(w));
        Ok(match &self.bias {
            Some(b) => {
                let b: GraphTensor<(X,)> = b.declare(s, prefix)?;
                y + expand_at::<_, (X, X)>(b, 0, d[0])
            }
            None => y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::InputKind;
    use crate::testing::rng;
    use rand::Rng;

    #[test]
    fn column_blocks_sum_to_the_whole_layer() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let (rows, a, b, out) = (5, 3, 4, 6);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| r.gen_range(-1.0..1.0)).collect() };
        let layer = DenseLinear {
            weight: Param::new("w".into(), vec![out, a + b], draw(out * (a + b)))?,
            bias: Some(Param::new("b".into(), vec![out], draw(out))?),
        };
        let x = draw(rows * (a + b));
        let (xa, xb): (Vec<f32>, Vec<f32>) = (
            x.chunks(a + b).flat_map(|c| c[..a].to_vec()).collect(),
            x.chunks(a + b).flat_map(|c| c[a..].to_vec()).collect(),
        );
        let mut s = Session::new();
        let t =
            s.input_with_shape::<(X, X)>("x", InputKind::Values, &[rows.into(), (a + b).into()]);
        let ta = s.input_with_shape::<(X, X)>("xa", InputKind::Values, &[rows.into(), a.into()]);
        let tb = s.input_with_shape::<(X, X)>("xb", InputKind::Values, &[rows.into(), b.into()]);
        let whole = layer.build(&mut s, "", t)?;
        let first = DenseLinear {
            weight: layer.columns(0, a)?.weight,
            bias: layer.bias.clone(),
        };
        // A session weight is declared once per name: the second use gets its own prefix.
        let parts =
            first.build(&mut s, "p.", ta)? + layer.columns(a, a + b)?.build(&mut s, "p.", tb)?;
        s.output("whole", whole);
        s.output("parts", parts);
        s.set("x", x.clone(), &[rows, a + b])?;
        s.set("xa", xa, &[rows, a])?;
        s.set("xb", xb, &[rows, b])?;
        s.run()?;
        let (w, p) = (s.get("whole")?.data, s.get("parts")?.data);
        for i in 0..rows {
            for o in 0..out {
                let want: f32 = (0..a + b)
                    .map(|c| x[i * (a + b) + c] * layer.weight.data[o * (a + b) + c])
                    .sum::<f32>()
                    + layer.bias.as_ref().map_or(0.0, |b| b.data[o]);
                let (gw, gp) = (w[i * out + o], p[i * out + o]);
                assert!(
                    (gw - want).abs() < 1e-5,
                    "seed {seed}: x W^T + b ({gw} vs {want})"
                );
                assert!(
                    (gp - want).abs() < 1e-5,
                    "seed {seed}: column blocks ({gp} vs {want})"
                );
            }
        }
        assert!(layer.columns(2, 9).is_err());
        Ok(())
    }
}
