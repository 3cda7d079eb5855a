//! Gradient clipping by global norm, as `torch.nn.utils.clip_grad_norm_` (norm type 2).

/// Scales every gradient by `min(1, max_norm / (total + 1e-6))` with
/// `total = sqrt(Σ_tensors Σ_i g_i²)`; returns `total` (before clipping).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let total = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            for v in g.iter_mut() {
                *v = (f64::from(*v) * coef) as f32;
            }
        }
    }
    total
}
