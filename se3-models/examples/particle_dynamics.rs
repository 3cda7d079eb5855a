//! placeholder
use se3_models::physics::dynamics::DynamicsConfig;
use se3_models::physics::iterative_se3t::{DynamicsBatch, IterativeConfig, IterativeSe3Transformer, IterativeVariant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = DynamicsConfig::default().generate(0, || {})?;
    let train = &data.split("train").ok_or("no train")?.samples;
    let bs: usize = std::env::args().nth(1).map_or(Ok(20), |s| s.parse())?;
    for v in IterativeVariant::ALL {
        let t0 = std::time::Instant::now();
        let mut m = IterativeSe3Transformer::new(v, IterativeConfig::default(), 0, 1e-3)?;
        println!("{v:?}: build {:.2}s, {} params", t0.elapsed().as_secs_f64(), m.parameter_count());
        if let Some(p) = m.block_parameters(0) { for (k, v) in p { if v.len() > 5000 { println!("   {k} {}", v.len()); } } }
        let refs: Vec<_> = train[..bs].iter().collect();
        let b = DynamicsBatch::new(&refs)?;
        for _ in 0..2 {
            let t = std::time::Instant::now();
            let _ = m.loss_and_gradients(&b)?;
            let lg = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let l = m.train_step(&b)?;
            println!("  loss+grad {lg:.3}s, step loss {l:.5} {:.3}s", t.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
