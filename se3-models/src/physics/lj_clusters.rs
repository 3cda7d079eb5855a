//! Lennard-Jones clusters with analytic energies and forces, sampled by Langevin dynamics at
//! several temperatures: the data of the energy-and-forces potential.
//!
//! Reduced units: ε = σ = 1, unit masses, k_B = 1. A cluster of n atoms starts on a jittered
//! cubic lattice of spacing 2^(1/6) σ (the pair minimum) around the origin, is thermalised by
//! Langevin BAOAB (dt = 0.002, friction γ = 1) at temperature T for `equilibration_steps`, then
//! one configuration is recorded every `sample_every` steps. A sample holds the positions, the
//! velocities, the potential energy E and the forces −∂E/∂x. Sizes and temperatures cycle over
//! the trajectories of a split so every split covers every (n, T). Temperatures stay below the
//! clusters' evaporation range (T ≲ 0.35) so the clusters stay bound for the run.

use nalgebra::Vector3;
use rand::Rng;

use super::dataset::{Dataset, DatasetFile, DatasetKind, Sample};
use super::integrator::{LangevinBaoab, ParticleState};
use super::nbody::split_rng;
use super::potential::{energy_and_forces, PairPotential};
use super::random::normal_vector;
use crate::Error;

/// Parameters of the Lennard-Jones cluster generator.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LjClusterConfig {
    /// Cluster sizes (atoms), cycled over trajectories.
    pub sizes: Vec<usize>,
    /// Temperatures (units of ε/k_B), cycled over trajectories.
    pub temperatures: Vec<f64>,
    pub dt: f64,
    pub friction: f64,
    pub equilibration_steps: usize,
    pub sample_every: usize,
    /// Configurations recorded per trajectory.
    pub samples_per_trajectory: usize,
    /// Trajectories per split.
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl Default for LjClusterConfig {
    fn default() -> Self {
        LjClusterConfig {
            sizes: vec![10, 19, 26, 38],
            temperatures: vec![0.1, 0.2, 0.3],
            dt: 0.002,
            friction: 1.0,
            equilibration_steps: 1000,
            sample_every: 100,
            samples_per_trajectory: 10,
            train: 96,
            val: 24,
            test: 24,
        }
    }
}

/// The Lennard-Jones potential of the clusters (ε = σ = 1).
pub const LJ: PairPotential = PairPotential::LennardJones {
    epsilon: 1.0,
    sigma: 1.0,
};

/// `n` atoms on a cubic lattice of spacing 2^(1/6), nearest the origin first, each jittered by
/// N(0, 0.05²) per axis, centred.
pub fn initial_cluster<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<Vector3<f64>> {
    let spacing = 2f64.powf(1.0 / 6.0);
    let side = (n as f64).cbrt().ceil() as i64 + 1;
    let mut sites: Vec<Vector3<f64>> = Vec::new();
    for i in -side..=side {
        for j in -side..=side {
            for k in -side..=side {
                sites.push(Vector3::new(i as f64, j as f64, k as f64) * spacing);
            }
        }
    }
    sites.sort_by(|a, b| a.norm_squared().total_cmp(&b.norm_squared()));
    let mut atoms: Vec<Vector3<f64>> = sites
        .into_iter()
        .take(n)
        .map(|s| s + normal_vector(rng, 0.05))
        .collect();
    let centre = atoms.iter().fold(Vector3::zeros(), |a, x| a + x) / n.max(1) as f64;
    for x in &mut atoms {
        *x -= centre;
    }
    atoms
}

impl LjClusterConfig {
    fn check(&self) -> Result<(), Error> {
        if self.sizes.is_empty() || self.sizes.iter().any(|&n| n < 2) {
            return Err(Error::InvalidParameter {
                name: "sizes",
                expected: "a non-empty list of cluster sizes of at least 2 atoms",
                found: format!("{:?}", self.sizes),
            });
        }
        if self.temperatures.is_empty() || self.temperatures.iter().any(|&t| t.is_nan() || t < 0.0)
        {
            return Err(Error::InvalidParameter {
                name: "temperatures",
                expected: "a non-empty list of non-negative temperatures",
                found: format!("{:?}", self.temperatures),
            });
        }
        if self.sample_every == 0 || self.samples_per_trajectory == 0 {
            return Err(Error::InvalidParameter {
                name: "sample_every/samples_per_trajectory",
                expected: "at least 1 each",
                found: format!("{} / {}", self.sample_every, self.samples_per_trajectory),
            });
        }
        Ok(())
    }

    /// Samples of one Langevin trajectory of an `n`-atom cluster at temperature `t`.
    ///
    /// # Errors
    /// `InvalidParameter` for a bad config; `SimulationDiverged` if atoms collide.
    pub fn trajectory<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        n: usize,
        t: f64,
    ) -> Result<Vec<Sample>, Error> {
        self.check()?;
        let positions = initial_cluster(rng, n);
        let velocities = (0..n).map(|_| normal_vector(rng, t.sqrt())).collect();
        let mut state = ParticleState {
            positions,
            velocities,
        };
        let mut field = |x: &[Vector3<f64>]| Ok(energy_and_forces(&LJ, x, &[]));
        let mut langevin = LangevinBaoab::new(self.dt, t, self.friction, &state, &mut field)?;
        for _ in 0..self.equilibration_steps {
            langevin.step(&mut state, &mut field, rng)?;
        }
        let mut samples = Vec::with_capacity(self.samples_per_trajectory);
        for _ in 0..self.samples_per_trajectory {
            for _ in 0..self.sample_every {
                langevin.step(&mut state, &mut field, rng)?;
            }
            samples.push(Sample {
                positions: state.positions.clone(),
                velocities: state.velocities.clone(),
                features: Vec::new(),
                target_positions: Vec::new(),
                energy: Some(langevin.potential_energy()),
                forces: langevin.forces().to_vec(),
            });
        }
        Ok(samples)
    }

    /// The train/val/test data set for `seed` (one stream per split); `progress` is called after
    /// each trajectory.
    ///
    /// # Errors
    /// As [`LjClusterConfig::trajectory`].
    pub fn generate(&self, seed: u64, mut progress: impl FnMut()) -> Result<DatasetFile, Error> {
        self.check()?;
        let mut splits = Vec::new();
        for (index, (name, count)) in [
            ("train", self.train),
            ("val", self.val),
            ("test", self.test),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = split_rng(seed ^ 0x1E57, index as u64);
            let mut samples = Vec::new();
            for k in 0..count {
                let n = self.sizes[k % self.sizes.len()];
                let t = self.temperatures[(k / self.sizes.len()) % self.temperatures.len()];
                samples.extend(self.trajectory(&mut rng, n, t)?);
                progress();
            }
            splits.push((
                name.to_string(),
                Dataset {
                    feature_dim: 0,
                    samples,
                },
            ));
        }
        Ok(DatasetFile {
            kind: DatasetKind::LennardJones,
            seed,
            config: serde_json::to_string(self).unwrap_or_default(),
            splits,
        })
    }
}
