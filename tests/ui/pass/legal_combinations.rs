// Every legal combination of the rules compiles.
use se3::prelude::*;

#[fiber(0:16)]
pub struct Atoms;
#[fiber(0:32, 1:8)]
pub struct Hidden;
#[fiber(0:16, 1:4)]
pub struct Narrow;
#[fiber(0 e:8, 1o:4)]
pub struct Polar;
#[fiber("0e:4, 1o:2, 2e:1")]
pub struct PolarWide;
#[fiber(0:4, 1:4, 2:4, 3:4, 4:2, 5:2, 6:2, 7:1, 8:1, 9:1, 10:1,)]
pub struct Deep;

fn main() -> Result<(), Error> {
    let mut rng = rand::thread_rng();
    let h = Features::<Hidden>::zeros(3);
    let h2 = Features::<Hidden>::zeros(3);

    // same fiber: add, subtract, residual
    let sum = (&h + &h2)?;
    let _ = (sum.clone() - h2.clone())?;
    let _ = h.residual(&sum)?;

    // has degree
    let _: &DegreeTensor = h.degree::<Degree<1>>();
    let _ = Features::<Deep>::zeros(1).degree::<Degree<10>>();

    // layers meet; same degrees for Linear and concat
    let down = Linear::<Hidden, Narrow>::new(&mut rng);
    let up = Linear::<Narrow, Hidden>::new(&mut rng);
    let net = down.then(Activation::<Narrow, Relu>::new(Relu)).then(up);
    let out: Features<Hidden> = net.forward(&h);
    let cat = out.concat(&Features::<Narrow>::zeros(3))?;
    // a concatenation is a fiber of its own: it feeds layers like any other
    let merge = Linear::<se3::Cat<Hidden, Narrow>, Hidden>::new(&mut rng);
    let _: Features<Hidden> = merge.forward(&cat);

    // scalar-only ops on degree 0
    let _ = h.activate(Silu, Degree::<0>);
    let _ = h.add_bias::<Degree<0>>(&[0.0; 32])?;

    // invariants from degree 0, norms from any degree
    let _ = h.invariant::<Degree<0>>().sum();
    let _ = h.norms::<Degree<1>>().sum();
    let p = Features::<Polar>::zeros(2);
    let _ = p.invariant::<Degree<0>>();

    // Clebsch-Gordan paths and parity
    let _ = Path::<Degree<1>, Degree<1>, Degree<0>>::new();
    let _ = Path::<Degree<2>, Degree<3>, Degree<5>>::new();
    let _ = Path::<Degree<10>, Degree<10>, Degree<0>>::new();
    let tp = TensorProduct::<Hidden, Hidden, Hidden>::new()
        .path::<Degree<1>, Degree<1>, Degree<0>>()
        .path::<Degree<0>, Degree<1>, Degree<1>>()
        .path::<Degree<1>, Degree<1>, Degree<1>>();
    assert_eq!(tp.paths().len(), 3);
    let _ = TensorProduct::<Polar, Polar, PolarWide>::new()
        .path::<Degree<1>, Degree<1>, Degree<0>>()
        .path::<Degree<1>, Degree<1>, Degree<2>>()
        .path::<Degree<0>, Degree<1>, Degree<1>>();
    Ok(())
}
