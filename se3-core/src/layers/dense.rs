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
