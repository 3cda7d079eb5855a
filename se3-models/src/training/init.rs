//! Fresh weights for training from scratch, drawn as PyTorch's default initialisers draw them,
//! told apart by the tensor's key and shape.

use rand::{Rng, SeedableRng};

use crate::checkpoint::{StateDict, Tensor};
use crate::Error;

/// Fresh weights for `keys` (PyTorch key, shape), seeded:
/// - `<...>.weight` of shape `[out, in]` (`nn.Linear`): `U(-1/sqrt(in), 1/sqrt(in))`, and its
///   `<...>.bias`: the same bound;
/// - `<...>.weight` / `<...>.bias` of one axis without a matrix beside them (`nn.LayerNorm`):
///   ones / zeros;
/// - `...scale` (NormSE3's per-channel scales): ones;
/// - any other tensor of shape `[in, ..., out]` (LinearSE3's `weights.<l>`):
///   `N(0, 1) / sqrt(in)` (a sum of twelve uniforms stands in for the normal).
///
/// # Errors
/// `Core` only for an inconsistent shape (none for keys of a model's `expected_keys`).
pub fn fresh_weights(keys: &[(String, Vec<usize>)], seed: u64) -> Result<StateDict, Error> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let linear_in = |prefix: &str| -> Option<usize> {
        keys.iter()
            .find(|(k, s)| k == &format!("{prefix}.weight") && s.len() == 2)
            .map(|(_, s)| s[1])
    };
    let mut sd = StateDict::new();
    for (key, shape) in keys {
        let len: usize = shape.iter().product();
        let (prefix, last) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let uniform = |rng: &mut rand::rngs::StdRng, fan_in: usize| -> Vec<f64> {
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..len).map(|_| rng.gen_range(-b..=b)).collect()
        };
        let data = match (last, linear_in(prefix)) {
            ("weight" | "bias", Some(fan_in)) => uniform(&mut rng, fan_in),
            ("weight", None) if shape.len() == 1 => vec![1.0; len],
            ("bias", None) => vec![0.0; len],
            _ if key.ends_with("scale") => vec![1.0; len],
            _ => {
                let fan_in = shape.first().copied().unwrap_or(1).max(1) as f64;
                (0..len)
                    .map(|_| {
                        let normal = (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0;
                        normal / fan_in.sqrt()
                    })
                    .collect()
            }
        };
        sd.insert(key.clone(), Tensor::new(shape.clone(), data)?);
    }
    Ok(sd)
}
