//! An equivariant layer norm (Equiformer's `EquivariantLayerNormV2` form) as a graph builder.

use std::marker::PhantomData;

use luminal::prelude::*;

use super::graph::{dims, expand_at, retype, FeatureTensors, GraphFeatures, Param, ParamSource, X};
use crate::exec::Session;
use crate::fiber::{FeedsGraph, Fiber, FiberSpec};
use crate::Error;

/// Per node and degree:
///
/// - degree 0: `y = (x - mean_c x) / sqrt(var_c x + eps) * gamma_0 + beta` (LayerNorm over the
///   channels);
/// - degree `l > 0`: `y = x / sqrt(mean_c |x_c|^2 / (2l + 1) + eps) * gamma_l` (divided by the
///   root mean square norm over channels, direction of every channel kept).
///
/// Equivariant: norms and channel means of degree 0 are invariant, and each degree-l channel
/// is only scaled. Keys `affine_weight.<l>` (`c`), `affine_bias` (`c_0`). `eps = 1e-5`.
#[derive(Debug, Clone)]
pub struct EquivariantLayerNorm {
    fiber: FiberSpec,
    gamma: Vec<Param>,
    beta: Option<Param>,
    eps: f32,
}

impl EquivariantLayerNorm {
    /// A layer norm with `gamma = 1`, `beta = 0`.
    pub fn new(fiber: &FiberSpec) -> Self {
        let gamma = fiber
            .degrees()
            .iter()
            .map(|d| Param {
                key: format!("affine_weight.{}", d.l),
                shape: vec![d.channels],
                data: vec![1.0; d.channels],
            })
            .collect();
        let beta = fiber.channels(0).map(|c| Param {
            key: "affine_bias".into(),
            shape: vec![c],
            data: vec![0.0; c],
        });
        EquivariantLayerNorm {
            fiber: fiber.clone(),
            gamma,
            beta,
            eps: 1e-5,
        }
    }

    /// Loads the affine parameters under `prefix` (`<prefix>affine_weight.<l>` of shape
    /// `[c_l]` per degree, `<prefix>affine_bias` of shape `[c_0]` if the fiber has degree 0).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(src: &mut dyn ParamSource, prefix: &str, fiber: &FiberSpec) -> Result<Self, Error> {
        let mut ln = Self::new(fiber);
        for g in &mut ln.gamma {
            *g = Param::load(src, format!("{prefix}{}", g.key), g.shape.clone())?;
            g.key = g.key[prefix.len()..].to_string();
        }
        if let Some(b) = &mut ln.beta {
            *b = Param::load(src, format!("{prefix}{}", b.key), b.shape.clone())?;
            b.key = b.key[prefix.len()..].to_string();
        }
        Ok(ln)
    }

    /// The fiber (input and output).
    pub fn fiber(&self) -> &FiberSpec {
        &self.fiber
    }

    /// Adds the layer to `s` (weights `<prefix>affine_*`).
    ///
    /// # Errors
    /// `FiberMismatch` for another input fiber.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber, "layer norm input")?;
        let mut out = Vec::new();
        for ((d, t), g) in self
            .fiber
            .degrees()
            .iter()
            .zip(x.tensors())
            .zip(&self.gamma)
        {
            let t3: GraphTensor<(X, X, X)> = retype(*t);
            let dd = dims(t3);
            let (rows, c, m) = (dd[0], d.channels, d.width());
            let per_row = |v: GraphTensor<(X,)>| -> GraphTensor<(X, X, X)> {
                expand_at(expand_at::<_, (X, X)>(v, 1, c), 2, m)
            };
            let gt: GraphTensor<(X,)> = g.declare(s, prefix)?;
            let g3: GraphTensor<(X, X, X)> = expand_at(expand_at::<_, (X, X)>(gt, 0, rows), 2, m);
            let y = if d.l == 0 {
                let mean: GraphTensor<(X,)> =
                    t3.sum_reduce::<(X,), Axes2<1, 2>>() * (1.0 / c as f32);
                let centered = t3 - per_row(mean);
                let var: GraphTensor<(X,)> =
                    (centered * centered).sum_reduce::<(X,), Axes2<1, 2>>() * (1.0 / c as f32);
                let inv = (var + self.eps).sqrt().recip();
                let mut y = centered * per_row(inv) * g3;
                if let Some(b) = &self.beta {
                    let bt: GraphTensor<(X,)> = b.declare(s, prefix)?;
                    y += expand_at(expand_at::<_, (X, X)>(bt, 0, rows), 2, m);
                }
                y
            } else {
                let ms: GraphTensor<(X,)> =
                    (t3 * t3).sum_reduce::<(X,), Axes2<1, 2>>() * (1.0 / (c * m) as f32);
                let inv = (ms + self.eps).sqrt().recip();
                t3 * per_row(inv) * g3
            };
            out.push(retype(y));
        }
        Ok(FeatureTensors::from_parts(self.fiber.clone(), out))
    }
}

/// [`EquivariantLayerNorm`] typed by its fiber (input and output `F`).
#[derive(Debug, Clone)]
pub struct LayerNorm<F: Fiber> {
    layer: EquivariantLayerNorm,
    fiber: PhantomData<F>,
}

impl<F: Fiber> Default for LayerNorm<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Fiber> LayerNorm<F> {
    /// A layer norm with `gamma = 1`, `beta = 0`.
    pub fn new() -> Self {
        LayerNorm {
            layer: EquivariantLayerNorm::new(&F::spec()),
            fiber: PhantomData,
        }
    }

    /// Loads the affine parameters under `prefix` (see [`EquivariantLayerNorm::load`]).
    ///
    /// # Errors
    /// As [`EquivariantLayerNorm::load`].
    pub fn load(src: &mut dyn ParamSource, prefix: &str) -> Result<Self, Error> {
        Ok(LayerNorm {
            layer: EquivariantLayerNorm::load(src, prefix, &F::spec())?,
            fiber: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &EquivariantLayerNorm {
        &self.layer
    }

    /// Adds the layer to a graph (weights `<prefix>affine_*`).
    ///
    /// # Errors
    /// Those of [`Session::set_weight`] (none for a well-formed layer).
    pub fn build<X: FeedsGraph<F>>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &X,
    ) -> Result<GraphFeatures<F, X::Rows>, Error> {
        let x = X::feed_graph(x);
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
        )?))
    }
}

impl EquivariantLayerNorm {
    /// Visits every parameter as `(<prefix><key>, param)` (`affine_weight.<l>`, `affine_bias`).
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for p in self.gamma.iter().chain(&self.beta) {
            f(&format!("{prefix}{}", p.key), p);
        }
    }

    /// Visits every parameter mutably, as [`EquivariantLayerNorm::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for p in self.gamma.iter_mut().chain(&mut self.beta) {
            f(&format!("{prefix}{}", p.key), p)?;
        }
        Ok(())
    }
}

impl<F: Fiber> LayerNorm<F> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut EquivariantLayerNorm {
        &mut self.layer
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::testing::{random_rotation, rel_error, rng, rotate_rows};

    #[test]
    fn layer_norm_is_equivariant_and_normalises() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let fiber: FiberSpec = "0:5, 1:3, 2:2".parse()?;
        let ln = EquivariantLayerNorm::new(&fiber);
        let mut s = Session::new();
        let x = FeatureTensors::<luminal::prelude::Dyn<'n'>>::input(&mut s, "x", &fiber);
        ln.build(&mut s, "ln.", &x)?.output(&mut s, "y");
        let n = 6;
        let xs: Vec<Vec<f64>> = fiber
            .degrees()
            .iter()
            .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-2.0..2.0)).collect())
            .collect();
        let rot = random_rotation(&mut r);
        let mut run = |xs: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, Error> {
            for (d, v) in fiber.degrees().iter().zip(xs) {
                let v = v.iter().map(|&v| v as f32).collect();
                s.set(&format!("x.{}", d.l), v, &[n, d.channels, d.width()])?;
            }
            s.run()?;
            fiber
                .degrees()
                .iter()
                .map(|d| {
                    Ok(s.get(&format!("y.{}", d.l))?
                        .data
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect())
                })
                .collect()
        };
        let y = run(&xs)?;
        let xr: Vec<Vec<f64>> = fiber
            .degrees()
            .iter()
            .zip(&xs)
            .map(|(d, v)| Ok(rotate_rows(&crate::so3::wigner_d(d.l, &rot)?, v)))
            .collect::<Result<_, Error>>()?;
        let yr = run(&xr)?;
        for (d, (a, b)) in fiber.degrees().iter().zip(yr.iter().zip(&y)) {
            let want = rotate_rows(&crate::so3::wigner_d(d.l, &rot)?, b);
            assert!(rel_error(a, &want) < 1e-4, "seed {seed} degree {}", d.l);
        }
        // degree 0: zero mean and unit variance per node
        for row in y[0].chunks(5) {
            let mean = row.iter().sum::<f64>() / 5.0;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 5.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "seed {seed}: {mean} {var}"
            );
        }
        Ok(())
    }

    #[test]
    fn layer_norm_loads_its_affine_keys_and_names_a_missing_one() -> Result<(), Error> {
        use crate::exec::F32Tensor;
        use std::collections::HashMap;
        let fiber: FiberSpec = "0:3, 1:2".parse()?;
        let mut src: HashMap<String, F32Tensor> = HashMap::new();
        let t = |v: Vec<f32>| F32Tensor {
            shape: vec![v.len()],
            data: v,
        };
        src.insert("ln.affine_weight.0".into(), t(vec![2.0, 3.0, 4.0]));
        src.insert("ln.affine_weight.1".into(), t(vec![5.0, 6.0]));
        src.insert("ln.affine_bias".into(), t(vec![0.5, 0.5, 0.5]));
        let ln = EquivariantLayerNorm::load(&mut src, "ln.", &fiber)?;
        assert_eq!(ln.gamma[1].key, "affine_weight.1");
        assert_eq!(ln.gamma[1].data, vec![5.0, 6.0]);
        assert_eq!(ln.beta.as_ref().map(|b| b.data.clone()), Some(vec![0.5; 3]));
        src.remove("ln.affine_bias");
        assert!(matches!(
            EquivariantLayerNorm::load(&mut src, "ln.", &fiber),
            Err(Error::MissingKey { key, .. }) if key == "ln.affine_bias"
        ));
        Ok(())
    }
}
