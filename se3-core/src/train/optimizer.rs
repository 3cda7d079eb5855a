//! [`Sgd`], [`Adam`] and [`AdamW`] with the update rules of `torch.optim` (PyTorch 2.x,
//! single-tensor path, `maximize = False`, no AMSGrad), and the [`Optimizer`] trait.

use rustc_hash::FxHashMap;

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
}

#[derive(Debug, Clone)]
struct Moments {
    m: Vec<f64>,
    v: Vec<f64>,
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
            s.t += 1;
            let c1 = 1.0 - b1.powi(s.t);
            let c2 = 1.0 - b2.powi(s.t);
            let step_size = self.lr / c1;
            for (((x, &g), m), v) in p.value.iter_mut().zip(p.grad).zip(&mut s.m).zip(&mut s.v) {
                let mut w = f64::from(*x);
                let mut g = f64::from(g);
                if decoupled {
                    w *= 1.0 - self.lr * self.weight_decay;
                } else {
                    g += self.weight_decay * w;
                }
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / c2.sqrt() + self.eps;
                *x = (w - step_size * *m / denom) as f32;
            }
        }
        Ok(())
    }
}

macro_rules! adam_like {
    ($name:ident, $decoupled:expr, $doc:literal) => {
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
        }
    };
}

adam_like!(
    Adam,
    false,
    "Adam as `torch.optim.Adam`: `g = grad + weight_decay p`, `m = β1 m + (1 - β1) g`, \
     `v = β2 v + (1 - β2) g²`, `p -= lr / (1 - β1^t) m / (sqrt(v) / sqrt(1 - β2^t) + eps)`."
);
adam_like!(
    AdamW,
    true,
    "AdamW as `torch.optim.AdamW`: decoupled weight decay `p *= 1 - lr weight_decay`, then \
     the [`Adam`] update without weight decay in the gradient."
);
