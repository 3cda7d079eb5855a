//! Compiled modules under fresh random motions (`assert_module_equivariant`), E(3) modules
//! under reflections too, and one compiled graph run on clouds of several sizes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3::prelude::*;
use se3::testing::{assert_module_equivariant, random_vectors, seed, TOL_F32};

#[fiber(0 e:4, 1o:2)]
struct Polar;
#[fiber(0 e:8, 1o:4, 2 e:2)]
struct PolarHidden;
#[fiber(0 e:2, 1o:1)]
struct PolarOut;

#[derive(Module)]
struct PolarNet {
    conv1: Conv<Polar, PolarHidden>,
    norm: Norm<PolarHidden>,
    linear: Linear<PolarHidden, PolarHidden>,
    conv2: Conv<PolarHidden, PolarOut>,
}

impl Forward for PolarNet {
    type In = Polar;
    type Out = PolarOut;
    fn forward(
        &self,
        g: &mut GraphCtx,
        x: GraphFeatures<Polar>,
    ) -> Result<GraphFeatures<PolarOut>> {
        let h = self.conv1.apply(g, &x)?;
        let h = self.norm.apply(g, &h)?;
        let h = self.linear.apply(g, &h)?;
        self.conv2.apply(g, &h)
    }
}

#[test]
fn e3_module_is_equivariant_under_rotations_reflections_and_translations() -> TestResult {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let mut net = PolarNet::new(&mut rng)?.compile(Neighbors::knn(6))?;
    let report = assert_module_equivariant(&mut net, &mut rng, 24, TOL_F32)
        .map_err(|e| format!("seed {s}: {e}"))?;
    println!("seed {s}: {report}");
    assert!(report.reflected, "E(3) fibers are tested with a reflection");
    assert_eq!(report.degrees.len(), 2);
    Ok(())
}

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn one_compiled_module_runs_clouds_of_any_size_and_batches_them() -> TestResult {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let mut net = PolarNet::new(&mut rng)?.compile(Neighbors::knn(5))?;
    let sizes = [7, 19];
    let clouds: Vec<Cloud> = sizes
        .iter()
        .map(|&n| Cloud::new(random_vectors(&mut rng, n, 2.0)))
        .collect();
    let xs: Vec<Features<Polar>> = sizes
        .iter()
        .map(|&n| Features::from_fn(n, |_, _, _, _| rng.gen_range(-1.0..1.0)))
        .collect();
    let alone: Vec<Features<PolarOut>> = clouds
        .iter()
        .zip(&xs)
        .map(|(c, x)| net.forward(c, x))
        .collect::<Result<_>>()?;
    let joined = Features::<Polar>::from_fn(26, |d, n, c, m| {
        let (x, n) = if n < 7 { (&xs[0], n) } else { (&xs[1], n - 7) };
        x.block_of(d.l)
            .and_then(|b| b.get(n, c, m))
            .unwrap_or(f32::NAN)
    });
    let batched = net.forward(&Cloud::batch(&clouds), &joined)?;
    for (k, b) in batched.blocks().iter().enumerate() {
        let want: Vec<f32> = alone
            .iter()
            .flat_map(|y| y.blocks()[k].data().to_vec())
            .collect();
        let err = b
            .data()
            .iter()
            .zip(&want)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-5,
            "seed {s}: degree block {k} of the batch differs by {err}"
        );
    }
    // a feature count that does not match the cloud is a typed error
    assert!(matches!(
        net.forward(&clouds[0], &xs[1]),
        Err(Error::CloudInput { .. })
    ));
    Ok(())
}

#[test]
fn given_edges_and_a_wide_radius_give_the_knn_outputs_of_a_complete_graph() -> TestResult {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let model = PolarNet::new(&mut rng)?;
    let n = 6;
    let (src, dst): (Vec<usize>, Vec<usize>) = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (j, i)))
        .unzip();
    let cloud = Cloud::new(random_vectors(&mut rng, n, 2.0)).with_edges(src, dst)?;
    let x = Features::<Polar>::from_fn(n, |_, _, _, _| rng.gen_range(-1.0..1.0));
    let knn = model.compile(Neighbors::knn(n - 1))?.forward(&cloud, &x)?;
    let radius = model
        .compile(Neighbors::radius(1e9, n - 1))?
        .forward(&cloud, &x)?;
    let mut given_net = model.compile(Neighbors::given())?;
    let given = given_net.forward(&cloud, &x)?;
    for (k, want) in knn.blocks().iter().enumerate() {
        for (what, y) in [("radius", &radius), ("given edges", &given)] {
            let err = y.blocks()[k]
                .data()
                .iter()
                .zip(want.data())
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "seed {s}: {what}, block {k}: {err}");
        }
    }
    // a cloud without edges cannot run on given edges
    let bare = Cloud::new(random_vectors(&mut rng, n, 2.0));
    assert!(matches!(
        given_net.forward(&bare, &x),
        Err(Error::CloudInput { .. })
    ));
    Ok(())
}
