// macro validation: the fiber derives its traits itself, a user derive would clash.
use se3::prelude::*;

/// Hidden features.
#[fiber(0:32, 1:8)]
#[derive(Debug, Clone)]
pub struct Hidden;

fn main() {
    let _ = Hidden::spec();
}
