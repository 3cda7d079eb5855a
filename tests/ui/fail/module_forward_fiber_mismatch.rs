// rule: graph layer input (FeedsGraph) in a module's forward — the output of field `conv1`
// (fiber `Hidden`) passed to field `conv2`, whose input fiber is `Narrow`.
use se3::prelude::*;

#[fiber(0:4)]
struct Atoms;
#[fiber(0:16, 1:8)]
struct Hidden;
#[fiber(0:8, 1:4)]
struct Narrow;
#[fiber(0:2, 1:1)]
struct Out;

#[derive(Module)]
struct Net {
    conv1: Conv<Atoms, Hidden>,
    conv2: Conv<Narrow, Out>,
}

impl Forward for Net {
    type In = Atoms;
    type Out = Out;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Atoms>) -> Result<GraphFeatures<Out>> {
        let h = self.conv1.apply(g, &x)?;
        self.conv2.apply(g, &h)
    }
}

fn main() {}
