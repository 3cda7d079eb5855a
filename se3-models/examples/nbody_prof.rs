use rand::SeedableRng;
use se3_models::physics::dataset::Sample;
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;
fn main() {
    let cfg = NBodyConfig {
        train: 100,
        val: 0,
        test: 0,
        ..NBodyConfig::default()
    };
    let (file, _) = cfg.generate(1, || {}).unwrap();
    let train = &file.split("train").unwrap().samples;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut model = NBodyEgnn::new(NBodyEgnnConfig::default(), &mut rng);
    let batch: Vec<&Sample> = train.iter().collect();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let l = model.train_step(&batch).unwrap();
        eprintln!("step {:?} loss {l}", t.elapsed());
    }
}
