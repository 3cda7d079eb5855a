//! Learning-rate schedules, in the closed forms of `torch.optim.lr_scheduler` (which its
//! recursive updates equal): the learning rate of epoch (or step) `t`, from the base rate.

/// A learning-rate schedule over epochs `t = 0, 1, ...`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up as `LinearLR(start_factor, end_factor = 1, total_iters)`:
    /// `base (s + (1 - s) min(t, total) / total)`.
    LinearWarmup {
        start_factor: f64,
        total_iters: usize,
    },
    /// `CosineAnnealingLR(T_max, eta_min)`: `eta_min + (base - eta_min)(1 + cos(π t / T_max)) / 2`.
    Cosine { t_max: usize, eta_min: f64 },
    /// `StepLR(step_size, gamma)`: `base gamma^⌊t / step_size⌋`.
    Step { step_size: usize, gamma: f64 },
}

impl LrSchedule {
    /// The learning rate at epoch `t` for base rate `base`.
    pub fn lr(&self, base: f64, t: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::LinearWarmup {
                start_factor,
                total_iters,
            } => {
                let frac = if total_iters == 0 {
                    1.0
                } else {
                    t.min(total_iters) as f64 / total_iters as f64
                };
                base * (start_factor + (1.0 - start_factor) * frac)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let phase = std::f64::consts::PI * t as f64 / t_max.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + phase.cos()) / 2.0
            }
            LrSchedule::Step { step_size, gamma } => {
                base * gamma.powi((t / step_size.max(1)) as i32)
            }
        }
    }
}
