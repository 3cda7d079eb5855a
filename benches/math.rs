//! Criterion benchmarks of the SO(3) math: spherical harmonics (l <= 3, batches of vectors),
//! Wigner D, Clebsch-Gordan (cached) and the se3-transformer kernel basis. The headline
//! numbers with the e3nn ratio come from `se3 bench math`; this is the fine-grained view.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nalgebra::{Rotation3, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::basis::{KernelBasis, QjPrecision};
use se3_core::so3::spherical_harmonics::spherical_harmonics_batch_f32_into;
use se3_core::so3::{clebsch_gordan, sh_len, wigner_d, Convention, Normalization};

fn vectors(n: usize) -> Vec<[f32; 3]> {
    let mut rng = StdRng::seed_from_u64(0);
    (0..n)
        .map(|_| {
            [
                rng.gen_range(-1.0..1.0),
                rng.gen_range(-1.0..1.0),
                rng.gen_range(-1.0..1.0),
            ]
        })
        .collect()
}

fn spherical_harmonics(c: &mut Criterion) {
    let mut g = c.benchmark_group("spherical_harmonics_lmax3_f32");
    for n in [10_000usize, 100_000] {
        let vs = vectors(n);
        let mut out = vec![0.0f32; n * sh_len(3)];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &vs, |b, vs| {
            b.iter(|| {
                spherical_harmonics_batch_f32_into(
                    3,
                    vs,
                    Convention::E3nn,
                    Normalization::Component,
                    &mut out,
                )
            })
        });
    }
    g.finish();
}

fn wigner(c: &mut Criterion) {
    let r = Rotation3::from_axis_angle(&Vector3::y_axis(), 0.7)
        * Rotation3::from_axis_angle(&Vector3::x_axis(), 1.3);
    let mut g = c.benchmark_group("wigner_d");
    for l in [1usize, 4, 10] {
        g.bench_with_input(BenchmarkId::from_parameter(l), &l, |b, &l| {
            b.iter(|| wigner_d(l, &r))
        });
    }
    g.finish();
    c.bench_function("clebsch_gordan_cached_4_4_4", |b| {
        b.iter(|| clebsch_gordan(4, 4, 4))
    });
}

fn kernel_basis(c: &mut Criterion) {
    let kb = KernelBasis::new(3, QjPrecision::RoundedF32).expect("degree 3 is supported");
    let edges = vectors(10_000);
    let mut out = kb.allocate::<f32>(edges.len());
    let mut g = c.benchmark_group("kernel_basis_deg3_f32");
    g.throughput(Throughput::Elements(edges.len() as u64));
    g.bench_function("10000_edges", |b| {
        b.iter(|| kb.compute_into(&edges, &mut out))
    });
    g.finish();
}

criterion_group!(benches, spherical_harmonics, wigner, kernel_basis);
criterion_main!(benches);
