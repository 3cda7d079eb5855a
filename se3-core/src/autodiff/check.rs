//! Finite-difference gradient check: the graph's gradient (the backward pass, f32) against
//! central differences of its loss, `(L(x + h e_i) - L(x - h e_i)) / 2h`, with the loss
//! `L = Σ_k <o_k, c_k>` summed in f64 on the host from the f32 outputs and random cotangents.

use luminal::prelude::symbolic::Expression;
use rand::{rngs::StdRng, Rng};

use super::{gradients, Tensor};
use crate::exec::{InputKind, Session};
use crate::Error;

/// What a check graph gives back: the tensors to differentiate by input name, and the outputs.
pub(crate) type Built = (Vec<(&'static str, Tensor)>, Vec<Tensor>);

/// An input: name, data, shape.
pub(crate) type Input = (&'static str, Vec<f32>, Vec<usize>);

/// The worst error of one gradient: max |analytic - finite difference| / max(1, max |analytic|).
#[derive(Debug, Clone)]
pub(crate) struct Worst {
    pub name: &'static str,
    pub error: f64,
}

fn set_all(s: &mut Session, inputs: &[Input]) -> Result<(), Error> {
    for (name, data, shape) in inputs {
        s.set(name, data.clone(), shape)?;
    }
    Ok(())
}

fn loss(s: &Session, n_out: usize, cot: &[Vec<f32>]) -> Result<f64, Error> {
    let mut l = 0.0f64;
    for (k, c) in cot.iter().enumerate().take(n_out) {
        let o = s.get(&format!("out{k}"))?;
        l += o
            .data
            .iter()
            .zip(c)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>();
    }
    Ok(l)
}

/// Checks the gradients of the graph `build` makes with respect to the inputs it names, at
/// `inputs`, with step `h`; up to `max_probes` elements of each input are probed (all if fewer).
pub(crate) fn check_gradients(
    build: impl Fn(&mut Session) -> Built,
    inputs: &[Input],
    h: f32,
    max_probes: usize,
    rng: &mut StdRng,
) -> Result<Vec<Worst>, Error> {
    let mut fwd = Session::new();
    let (_, outs) = build(&mut fwd);
    for (k, o) in outs.iter().enumerate() {
        fwd.output(&format!("out{k}"), *o);
    }
    fwd.compile();
    set_all(&mut fwd, inputs)?;
    fwd.run()?;
    let mut cot = vec![];
    for k in 0..outs.len() {
        let n = fwd.get(&format!("out{k}"))?.data.len();
        cot.push(
            (0..n)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect::<Vec<_>>(),
        );
    }
    let mut bwd = Session::new();
    let (wrt, outs) = build(&mut bwd);
    let mut pairs = vec![];
    for (k, o) in outs.iter().enumerate() {
        let shape = fwd.get(&format!("out{k}"))?.shape;
        let dims: Vec<Expression> = shape.iter().map(|&d| d.into()).collect();
        let c = bwd.input_with_shape::<()>(&format!("cot{k}"), InputKind::Values, &dims);
        pairs.push((*o, c));
    }
    let grads = gradients(&pairs, &wrt.iter().map(|(_, t)| *t).collect::<Vec<_>>())?;
    for ((name, _), g) in wrt.iter().zip(&grads) {
        bwd.output(&format!("grad.{name}"), *g);
    }
    set_all(&mut bwd, inputs)?;
    for (k, c) in cot.iter().enumerate() {
        let shape = fwd.get(&format!("out{k}"))?.shape;
        bwd.set(&format!("cot{k}"), c.clone(), &shape)?;
    }
    bwd.run()?;
    let mut worst = vec![];
    for (name, _) in &wrt {
        let analytic = bwd.get(&format!("grad.{name}"))?.data;
        let Some(pos) = inputs.iter().position(|(n, ..)| n == name) else {
            return Err(Error::UnknownName {
                role: "input",
                name: name.to_string(),
            });
        };
        let (_, data, shape) = &inputs[pos];
        assert_eq!(
            analytic.len(),
            data.len(),
            "gradient of `{name}` has the wrong size"
        );
        let scale = analytic.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
        let probes: Vec<usize> = if data.len() <= max_probes {
            (0..data.len()).collect()
        } else {
            (0..max_probes)
                .map(|_| rng.gen_range(0..data.len()))
                .collect()
        };
        let mut error = 0.0f64;
        for i in probes {
            let (up, down) = (data[i] + h, data[i] - h);
            let mut at = |v: f32| -> Result<f64, Error> {
                let mut moved = data.clone();
                moved[i] = v;
                set_all(&mut fwd, inputs)?;
                fwd.set(name, moved, shape)?;
                fwd.run()?;
                loss(&fwd, outs.len(), &cot)
            };
            let fd = (at(up)? - at(down)?) / (up as f64 - down as f64);
            error = error.max((fd - analytic[i] as f64).abs() / scale);
        }
        worst.push(Worst { name, error });
    }
    Ok(worst)
}

/// Gradients by name.
pub(crate) type NamedGradients = Vec<(String, Vec<f64>)>;

/// The worst relative error of each gradient of `got` against the gradient of the same name in
/// `reference`, with its name; `Err(name)` for a name `reference` lacks.
pub(crate) fn worst_by_name(
    reference: &[(String, Vec<f64>)],
    got: &[(String, Vec<f64>)],
) -> Result<(f64, String), String> {
    let mut worst = (0.0f64, String::new());
    for (name, g) in got {
        let (_, want) = reference
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| name.clone())?;
        let err = crate::testing::rel_error(g, want);
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    Ok(worst)
}
