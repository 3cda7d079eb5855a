//! [`Sgd`], [`Adam`] and [`AdamW`] with the update rules of `torch.optim` (PyTorch 2.x,
//! single-tensor path, `maximize = False`, no AMSGrad), and the [`Optimizer`] trait.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::OptimizerState;
use crate::Error;

/// A named parameter and its gradient, both row-major and of the same length.
#[derive(Debug)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
}

/// An optimizer: updates parameters from their gradients, one step at a time.
pub trait Optimizer {
    /// One update of every parameter not frozen.
    ///
    /// # Errors
    /// `LengthMismatch` if a gradient's length differs from its parameter's,
    /// `NonFiniteGradient` if a gradient holds NaN or an infinity (no parameter is changed).
    fn step(&mut self, params: &mut [Param<'_>]) -> Result<(), Error>;
    /// The learning rate of the next step.
    fn lr(&self) -> f64;
    /// Sets the learning rate (e.g. from an [`LrSchedule`](super::LrSchedule)).
    fn set_lr(&mut self, lr: f64);
    /// Leaves every parameter whose name starts with `prefix` unchanged from now on.
    fn freeze(&mut self, prefix: &str);
    /// The per-parameter state (moments, momentum buffers, step counts) as float64 buffers.
    fn state(&self) -> OptimizerState;
    /// Replaces the per-parameter state with `state` (from [`Optimizer::state`] of the same
    /// kind of optimizer), so that the next step continues exactly where it left off.
    ///
    /// # Errors
    /// `OptimizerStateMismatch` if `state` comes from another optimizer; `LengthMismatch` if a
    /// parameter's buffers differ in length (e.g. a step count that is not one number).
    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error>;
}

/// `LengthMismatch` unless a stored buffer has the parameter's length.
fn check_state_len(what: &'static str, expected: usize, found: usize) -> Result<(), Error> {
    if expected != found {
        return Err(Error::LengthMismatch {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

/// Checks every gradient before any parameter changes; true if `name` is frozen.
fn check(params: &[Param<'_>]) -> Result<(), Error> {
    for p in params {
        if p.grad.len() != p.value.len() {
            return Err(Error::LengthMismatch {
                what: "gradient of a parameter",
                expected: p.value.len(),
                found: p.grad.len(),
            });
        }
        if let Some((index, v)) = p.grad.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteGradient {
                name: p.name.to_string(),
                index,
                value: f64::from(*v),
            });
        }
    }
    Ok(())
}

fn frozen(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// Stochastic gradient descent as `torch.optim.SGD`: with `g = grad + weight_decay p`,
/// momentum buffer `b = g` on the first step, then `b = momentum b + (1 - dampening) g`;
/// the step direction is `g + momentum b` (Nesterov) or `b` (or `g` without momentum);
/// `p -= lr direction`.
#[derive(Debug, Clone)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    frozen: Vec<String>,
    buffers: FxHashMap<String, Vec<f64>>,
}

impl Sgd {
    /// Plain SGD at learning rate `lr` (set the public fields for the rest).
    pub fn new(lr: f64) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            frozen: Vec::new(),
            buffers: FxHashMap::default(),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [Param<'_>]) -> Result<(), Error> {
        check(params)?;
        for p in params.iter_mut() {
            if frozen(p.name, &self.frozen) {
                continue;
            }
            let fresh = !self.buffers.contains_key(p.name);
            let buf = self
                .buffers
                .entry(p.name.to_string())
                .or_insert_with(|| vec![0.0; p.value.len()]);
            check_state_len("momentum buffer of a parameter", p.value.len(), buf.len())?;
            for ((v, &g), b) in p.value.iter_mut().zip(p.grad).zip(buf.iter_mut()) {
                let x = f64::from(*v);
                let mut d = f64::from(g) + self.weight_decay * x;
                if self.momentum != 0.0 {
                    *b = if fresh {
                        d
                    } else {
                        self.momentum * *b + (1.0 - self.dampening) * d
                    };
                    d = if self.nesterov {
                        d + self.momentum * *b
                    } else {
                        *b
                    };
                }
                *v = (x - self.lr * d) as f32;
            }
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn freeze(&mut self, prefix: &str) {
        self.frozen.push(prefix.to_string());
    }

    fn state(&self) -> OptimizerState {
        let mut st = OptimizerState::new("sgd");
        for (name, b) in &self.buffers {
            st.buffers
                .insert(format!("momentum_buffer.{name}"), b.clone());
        }
        st
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
        state.expect_kind("sgd")?;
        self.buffers = state
            .params_with("momentum_buffer")
            .into_iter()
            .filter_map(|p| state.buffer("momentum_buffer", &p).map(|b| (p, b.clone())))
            .collect();
        Ok(())
    }
}

/// Adam's moments of one parameter, stored in the parameters' precision (float32, as
/// `torch.optim.Adam` keeps `exp_avg` / `exp_avg_sq` in the parameter's dtype); each update is
/// computed in float64 and rounded once.
#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

/// The shared Adam update; `decoupled` chooses AdamW's weight decay.
#[derive(Debug, Clone)]
struct AdamCore {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    frozen: Vec<String>,
    state: FxHashMap<String, Moments>,
}

impl AdamCore {
    fn new(lr: f64) -> AdamCore {
        AdamCore {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            frozen: Vec::new(),
            state: FxHashMap::default(),
        }
    }

    fn step(&mut self, params: &mut [Param<'_>], decoupled: bool) -> Result<(), Error> {
        check(params)?;
        let (b1, b2) = self.betas;
        for p in params.iter_mut() {
            if frozen(p.name, &self.frozen) {
                continue;
            }
            let n = p.value.len();
            let s = self
                .state
                .entry(p.name.to_string())
                .or_insert_with(|| Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    t: 0,
                });
            check_state_len("Adam moments of a parameter", n, s.m.len())?;
            check_state_len("Adam moments of a parameter", n, s.v.len())?;
            s.t += 1;
            let c1 = 1.0 - b1.powi(s.t);
            let c2 = 1.0 - b2.powi(s.t);
            let rule = AdamRule {
                b1,
                b2,
                c2_sqrt: c2.sqrt(),
                step_size: self.lr / c1,
                eps: self.eps,
                lr: self.lr,
                weight_decay: self.weight_decay,
                decoupled,
            };
            // blocks of elements on the rayon pool (each element's update is independent)
            p.value
                .par_chunks_mut(ADAM_BLOCK)
                .zip(p.grad.par_chunks(ADAM_BLOCK))
                .zip(s.m.par_chunks_mut(ADAM_BLOCK))
                .zip(s.v.par_chunks_mut(ADAM_BLOCK))
                .for_each(|(((x, g), m), v)| rule.apply(x, g, m, v));
        }
        Ok(())
    }
}

/// Elements per parallel block of an Adam update.
const ADAM_BLOCK: usize = 1 << 15;

/// The constants of one Adam update of one parameter.
#[derive(Debug, Clone, Copy)]
struct AdamRule {
    b1: f64,
    b2: f64,
    c2_sqrt: f64,
    step_size: f64,
    eps: f64,
    lr: f64,
    weight_decay: f64,
    decoupled: bool,
}

impl AdamRule {
    /// The update of a block of elements, compiled for the CPU's best instruction set (the
    /// float64 arithmetic vectorises).
    fn apply(&self, x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::exec::simd::{isa, Isa};
            match isa() {
                // SAFETY: `isa()` detected these features on this CPU.
                Isa::Avx512 => return unsafe { self.apply_avx512(x, g, m, v) },
                // SAFETY: as above.
                Isa::Avx2 => return unsafe { self.apply_avx2(x, g, m, v) },
                Isa::Plain => {}
            }
        }
        self.apply_impl(x, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn apply_avx512(&self, x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_impl(x, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_avx2(&self, x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_impl(x, g, m, v)
    }

    /// `torch.optim.Adam`'s update in float64, rounded once to the float32 state (no fused
    /// multiply-adds: the same roundings on every instruction set).
    #[inline(always)]
    fn apply_impl(&self, x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.b1, self.b2);
        for (((x, &g), m), v) in x.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let mut w = f64::from(*x);
            let mut g = f64::from(g);
            if self.decoupled {
                w *= 1.0 - self.lr * self.weight_decay;
            } else {
                g += self.weight_decay * w;
            }
            let m1 = b1 * f64::from(*m) + (1.0 - b1) * g;
            let v1 = b2 * f64::from(*v) + (1.0 - b2) * g * g;
            *m = m1 as f32;
            *v = v1 as f32;
            let denom = v1.sqrt() / self.c2_sqrt + self.eps;
            *x = (w - self.step_size * m1 / denom) as f32;
        }
    }
}

impl AdamCore {
    fn state(&self, kind: &str) -> OptimizerState {
        let mut st = OptimizerState::new(kind);
        for (name, m) in &self.state {
            let wide = |b: &[f32]| b.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
            st.buffers.insert(format!("exp_avg.{name}"), wide(&m.m));
            st.buffers.insert(format!("exp_avg_sq.{name}"), wide(&m.v));
            st.buffers
                .insert(format!("step.{name}"), vec![f64::from(m.t)]);
        }
        st
    }

    fn load_state(&mut self, state: &OptimizerState, kind: &'static str) -> Result<(), Error> {
        state.expect_kind(kind)?;
        let mut moments = FxHashMap::default();
        for name in state.params_with("step") {
            let t = state.buffer("step", &name).map_or(&[][..], |b| &b[..]);
            check_state_len("Adam step count of a parameter", 1, t.len())?;
            let narrow = |b: Option<&Vec<f64>>| -> Vec<f32> {
                b.map(|b| b.iter().map(|&x| x as f32).collect())
                    .unwrap_or_default()
            };
            let m = narrow(state.buffer("exp_avg", &name));
            let v = narrow(state.buffer("exp_avg_sq", &name));
            check_state_len("Adam moments of a parameter", m.len(), v.len())?;
            moments.insert(
                name,
                Moments {
                    m,
                    v,
                    t: t[0] as i32,
                },
            );
        }
        self.state = moments;
        Ok(())
    }
}

macro_rules! adam_like {
    ($name:ident, $decoupled:expr, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(AdamCore);

        impl $name {
            /// At learning rate `lr`, betas (0.9, 0.999), eps 1e-8, no weight decay.
            pub fn new(lr: f64) -> $name {
                $name(AdamCore::new(lr))
            }

            /// With the moment decay rates `(beta1, beta2)`.
            pub fn betas(mut self, beta1: f64, beta2: f64) -> $name {
                self.0.betas = (beta1, beta2);
                self
            }

            /// With `eps` added to the denominator.
            pub fn eps(mut self, eps: f64) -> $name {
                self.0.eps = eps;
                self
            }

            /// With weight decay `weight_decay`.
            pub fn weight_decay(mut self, weight_decay: f64) -> $name {
                self.0.weight_decay = weight_decay;
                self
            }
        }

        impl Optimizer for $name {
            fn step(&mut self, params: &mut [Param<'_>]) -> Result<(), Error> {
                self.0.step(params, $decoupled)
            }

            fn lr(&self) -> f64 {
                self.0.lr
            }

            fn set_lr(&mut self, lr: f64) {
                self.0.lr = lr;
            }

            fn freeze(&mut self, prefix: &str) {
                self.0.frozen.push(prefix.to_string());
            }

            fn state(&self) -> OptimizerState {
                self.0.state($kind)
            }

            fn load_state(&mut self, state: &OptimizerState) -> Result<(), Error> {
                self.0.load_state(state, $kind)
            }
        }
    };
}

adam_like!(
    Adam,
    false,
    "adam",
    "Adam as `torch.optim.Adam`: `g = grad + weight_decay p`, `m = β1 m + (1 - β1) g`, \
     `v = β2 v + (1 - β2) g²`, `p -= lr / (1 - β1^t) m / (sqrt(v) / sqrt(1 - β2^t) + eps)`."
);
adam_like!(
    AdamW,
    true,
    "adamw",
    "AdamW as `torch.optim.AdamW`: decoupled weight decay `p *= 1 - lr weight_decay`, then \
     the [`Adam`] update without weight decay in the gradient."
);
