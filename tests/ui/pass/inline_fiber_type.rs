// The inline form `fiber_type!(...)` gives a fiber type usable wherever a declared one is.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
pub struct Hidden;

type Anon = fiber_type!(0:32, 1:8);
type Polar = fiber_type!("0e:4, 2e:2, 3o:1");

fn vector_norms(h: &Features<fiber_type!(0:32, 1:8)>) -> Invariants {
    h.norms::<Degree<1>>()
}

fn main() -> Result<(), Error> {
    assert_eq!(<Anon as Fiber>::spec(), Hidden::spec());
    assert_eq!(<Polar as Fiber>::spec().to_string(), "0e:4, 2e:2, 3o:1");
    assert_eq!(<Polar as Fiber>::DIM, 4 + 2 * 5 + 7);
    let p = Features::<Polar>::zeros(2);
    assert_eq!(p.degree::<Degree<3>>().shape(), [2, 1, 7]);
    assert_eq!(p.degree::<Degree<2>>().shape(), [2, 2, 5]);
    let _ = p.invariant::<Degree<0>>();
    let mut rng = rand::thread_rng();
    let to_named = Linear::<Anon, Hidden>::new(&mut rng);
    let h: Features<Hidden> = to_named.forward(&Features::<Anon>::zeros(3));
    let back = Linear::<Hidden, Anon>::new(&mut rng).forward(&h);
    assert_eq!(vector_norms(&back).shape(), [3, 8]);
    let _tp = TensorProduct::<Polar, Polar, Polar>::new().path::<Degree<3>, Degree<3>, Degree<2>>();
    Ok(())
}
