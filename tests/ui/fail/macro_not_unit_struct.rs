// macro validation: a fiber is a unit struct; its data lives in `Features<F>`.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden {
    values: Vec<f32>,
}

fn main() {
    let _ = Hidden::spec();
}
