//! Gradient checks of the fused attention backward: against central finite differences of
//! the fused forward, and against the backward pass through the unfused attention graph
//! (luminal primitives only) on the same inputs.

use luminal::prelude::{symbolic::Expression, *};
use rand::Rng;

use super::{head_attention, HeadLogits};
use crate::autodiff::check::{check_gradients, Built, Input};
use crate::autodiff::gradients;
use crate::exec::tests::{rel_err, rng};
use crate::exec::{InputKind, Session};
use crate::layers::graph::{expand_at, permute, reshape, X};
use crate::Error;

type T4 = GraphTensor<(X, X, X, X)>;
type T5 = GraphTensor<(X, X, X, X, X)>;

/// Sizes of one check: batch, nodes, components, heads, head width.
#[derive(Clone, Copy)]
struct Sizes {
    b: usize,
    n: usize,
    c: usize,
    heads: usize,
    dh: usize,
}

impl Sizes {
    fn width(&self) -> usize {
        self.heads * self.dh
    }
    fn dims(&self) -> [Expression; 4] {
        [
            self.b.into(),
            self.n.into(),
            self.c.into(),
            self.width().into(),
        ]
    }
}

fn qkv_mask(s: &mut Session, z: Sizes) -> (T4, T4, T4, GraphTensor<(X, X)>) {
    let d = z.dims();
    let q = s.input_with_shape::<(X, X, X, X)>("q", InputKind::Values, &d);
    let k = s.input_with_shape::<(X, X, X, X)>("k", InputKind::Values, &d);
    let v = s.input_with_shape::<(X, X, X, X)>("v", InputKind::Values, &d);
    let m = s.input_with_shape::<(X, X)>("m", InputKind::Values, &d[..2]);
    (q, k, v, m)
}

/// `(b, n, c, H dh)` as `(b, H, n, c dh)`.
fn split_heads(x: T4, z: Sizes) -> T4 {
    let e = |v: usize| Expression::from(v);
    let x5: T5 = reshape(x, &[e(z.b), e(z.n), e(z.c), e(z.heads), e(z.dh)]);
    let p = permute(x5, &[0, 3, 1, 2, 4]).contiguous();
    reshape(p, &[e(z.b), e(z.heads), e(z.n), e(z.c * z.dh)])
}

/// The module formula with luminal primitives: `(b, H, n, n, d)` products, masked softmax.
/// Every batch element needs an unmasked key.
fn unfused(
    q: T4,
    k: T4,
    v: T4,
    m: GraphTensor<(X, X)>,
    z: Sizes,
    scale: f32,
    logits: HeadLogits,
) -> T4 {
    let e = |v: usize| Expression::from(v);
    let (n, d) = (e(z.n), e(z.c * z.dh));
    let (qh, kh, vh) = (split_heads(q, z), split_heads(k, z), split_heads(v, z));
    let qe: T5 = expand_at(qh, 3, n);
    let ke: T5 = expand_at(kh, 2, n);
    let dot: T4 = (qe * ke).sum_reduce::<(X, X, X, X), Axis<4>>();
    let l = match logits {
        HeadLogits::Dot => dot * scale,
        HeadLogits::L2Distance => {
            let qq: GraphTensor<(X, X, X)> = (qh * qh).sum_reduce::<(X, X, X), Axis<3>>();
            let kk: GraphTensor<(X, X, X)> = (kh * kh).sum_reduce::<(X, X, X), Axis<3>>();
            dot * (2.0 * scale)
                - expand_at::<_, (X, X, X, X)>(qq, 3, n)
                - expand_at::<_, (X, X, X, X)>(kk, 2, n)
        }
    };
    let m3: GraphTensor<(X, X, X)> = expand_at(m, 1, n);
    let m4: T4 = expand_at(m3, 1, e(z.heads));
    let mx: GraphTensor<(X, X, X)> = l.max_reduce::<(X, X, X), Axis<3>>();
    let ex = (l - expand_at::<_, (X, X, X, X)>(mx, 3, n)).exp() * m4;
    let sum: GraphTensor<(X, X, X)> = ex.sum_reduce::<(X, X, X), Axis<3>>();
    let a = ex * expand_at::<_, (X, X, X, X)>(sum.recip(), 3, n);
    let ae: T5 = expand_at(a, 4, d);
    let ve: T5 = expand_at(vh, 2, n);
    let o: T4 = (ae * ve).sum_reduce::<(X, X, X, X), Axis<3>>();
    let o5: T5 = reshape(o, &[e(z.b), e(z.heads), n, e(z.c), e(z.dh)]);
    let back = permute(o5, &[0, 2, 3, 1, 4]).contiguous();
    reshape(back, &z.dims())
}

#[test]
fn head_attention_gradients_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    for (logits, zero, tied) in [
        (HeadLogits::Dot, false, false),
        (HeadLogits::Dot, true, false),
        (HeadLogits::L2Distance, false, true),
    ] {
        let z = Sizes {
            b: 3,
            n: r.gen_range(2..7),
            c: r.gen_range(1..4),
            heads: 2,
            dh: r.gen_range(1..3),
        };
        let len = z.b * z.n * z.c * z.width();
        let scale = 1.0 / ((z.c * z.dh) as f32).sqrt();
        // batch 0 random keys (one kept), batch 1 all kept, batch 2 all masked
        let mut mask: Vec<f32> = (0..z.b * z.n)
            .map(|_| f32::from(u8::from(r.gen_bool(0.6))))
            .collect();
        mask[0] = 1.0;
        mask[z.n..2 * z.n].fill(1.0);
        mask[2 * z.n..].fill(0.0);
        let shape = vec![z.b, z.n, z.c, z.width()];
        let mut draw = || {
            (0..len)
                .map(|_| r.gen_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let inputs: Vec<Input> = vec![
            ("q", draw(), shape.clone()),
            ("k", draw(), shape.clone()),
            ("v", draw(), shape.clone()),
            ("m", mask, vec![z.b, z.n]),
        ];
        let build = move |s: &mut Session| -> Built {
            let (q, k, v, m) = qkv_mask(s, z);
            // tied keys read the query tensor through both inputs (L2 attention ties to_k)
            let kk = if tied { q } else { k };
            // a permuted view as the value input
            let vt = permute(permute(v, &[0, 2, 1, 3]).contiguous(), &[0, 2, 1, 3]);
            let o = head_attention(q, kk, vt, m, z.heads, scale, logits, zero);
            let mut wrt = vec![("q", q.no_shape()), ("v", v.no_shape())];
            if !tied {
                wrt.push(("k", k.no_shape()));
            }
            (wrt, vec![(o * o).no_shape(), o.no_shape()])
        };
        let worst = check_gradients(build, &inputs, 1e-2, 48, &mut r)?;
        for w in &worst {
            println!(
                "head_attention {logits:?} zero {zero} tied {tied}: d/d{} worst {:.2e}",
                w.name, w.error
            );
            assert!(
                w.error < 2e-3,
                "{logits:?}: gradient of {} off by {:.3e}",
                w.name,
                w.error
            );
        }
    }
    Ok(())
}

#[test]
fn head_attention_backward_matches_the_gradient_of_its_unfused_graph() -> Result<(), Error> {
    let mut r = rng();
    for logits in [HeadLogits::Dot, HeadLogits::L2Distance] {
        // n above the kernel's row block and not a multiple of it
        let z = Sizes {
            b: 2,
            n: r.gen_range(65..90),
            c: r.gen_range(1..4),
            heads: 2,
            dh: 2,
        };
        let len = z.b * z.n * z.c * z.width();
        let scale = 1.0 / ((z.c * z.dh) as f32).sqrt();
        let mut draw = || {
            (0..len)
                .map(|_| r.gen_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let (qs, ks, vs, cot) = (draw(), draw(), draw(), draw());
        let mut mask: Vec<f32> = (0..z.b * z.n)
            .map(|_| f32::from(u8::from(r.gen_bool(0.7))))
            .collect();
        mask[0] = 1.0;
        mask[z.n] = 1.0;
        let mut got = vec![];
        for fused in [true, false] {
            let mut s = Session::new();
            let (q, k, v, m) = qkv_mask(&mut s, z);
            let c = s.input_with_shape::<(X, X, X, X)>("c", InputKind::Values, &z.dims());
            let o = if fused {
                head_attention(q, k, v, m, z.heads, scale, logits, false)
            } else {
                unfused(q, k, v, m, z, scale, logits)
            };
            let gs = gradients(
                &[(o.no_shape(), c.no_shape())],
                &[q.no_shape(), k.no_shape(), v.no_shape()],
            )?;
            s.output("o", o);
            for (i, g) in gs.iter().enumerate() {
                s.output(&format!("g{i}"), *g);
            }
            s.compile();
            let shape = [z.b, z.n, z.c, z.width()];
            for (name, x) in [("q", &qs), ("k", &ks), ("v", &vs), ("c", &cot)] {
                s.set(name, x.clone(), &shape)?;
            }
            s.set("m", mask.clone(), &[z.b, z.n])?;
            s.run()?;
            got.push(
                ["o", "g0", "g1", "g2"]
                    .iter()
                    .map(|k| s.get(k).map(|t| t.data))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        for (name, (f, u)) in ["output", "dq", "dk", "dv"]
            .iter()
            .zip(got[0].iter().zip(&got[1]))
        {
            let e = rel_err(f, u);
            println!(
                "head_attention {logits:?} n {}: fused vs unfused {name} {e:.2e}",
                z.n
            );
            assert!(
                e < 1e-4,
                "{logits:?}: {name} fused vs unfused off by {e:.3e}"
            );
        }
    }
    Ok(())
}
