//! Particle dynamics in blocks of steps: the setup of the iterative SE(3)-Transformer study
//! (Fuchs et al. 2021).
//!
//! N unit-mass particles interact through one pair potential (default: all-pairs harmonic springs
//! u = k/2 (r − r0)² with k = 1, r0 = 1); Newtonian dynamics integrated by velocity Verlet
//! (symplectic), dt = 0.01. Each trajectory of `blocks × block_steps` steps is sliced into blocks
//! of `block_steps` = 10 steps; a sample is the positions and velocities at a block's start and
//! the positions at its end. Initial positions x_i ~ N(0, σ² I), velocities v_i ~ N(0, s² I),
//! then the centre-of-mass velocity is removed (the system does not drift away).

use nalgebra::Vector3;
use rand::Rng;

use super::dataset::{Dataset, DatasetFile, DatasetKind, Sample};
use super::integrator::{ParticleState, VelocityVerlet};
use super::nbody::split_rng;
use super::potential::{energy_and_forces, PairPotential};
use super::random::normal_vector;
use crate::Error;

/// Parameters of the particle-dynamics generator.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DynamicsConfig {
    pub particles: usize,
    #[serde(skip)]
    pub potential: PairPotential,
    pub position_std: f64,
    pub velocity_std: f64,
    pub dt: f64,
    /// Steps per block (input at the block's start, target at its end).
    pub block_steps: usize,
    /// Blocks per trajectory.
    pub blocks: usize,
    /// Trajectories per split.
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl Default for DynamicsConfig {
    fn default() -> Self {
        DynamicsConfig {
            particles: 10,
            potential: PairPotential::Spring {
                stiffness: 1.0,
                rest_length: 1.0,
            },
            position_std: 1.0,
            velocity_std: 0.5,
            dt: 0.01,
            block_steps: 10,
            blocks: 10,
            train: 200,
            val: 50,
            test: 50,
        }
    }
}

impl DynamicsConfig {
    fn check(&self) -> Result<(), Error> {
        if self.particles < 2 || self.block_steps == 0 || self.blocks == 0 {
            return Err(Error::InvalidParameter {
                name: "particles/block_steps/blocks",
                expected: "at least 2 particles, 1 step a block and 1 block",
                found: format!(
                    "{} / {} / {}",
                    self.particles, self.block_steps, self.blocks
                ),
            });
        }
        Ok(())
    }

    /// Initial state: Gaussian positions and velocities, zero total momentum.
    pub fn initial_state<R: Rng + ?Sized>(&self, rng: &mut R) -> ParticleState {
        let n = self.particles;
        let positions = (0..n)
            .map(|_| normal_vector(rng, self.position_std))
            .collect();
        let mut velocities: Vec<Vector3<f64>> = (0..n)
            .map(|_| normal_vector(rng, self.velocity_std))
            .collect();
        let mean = velocities.iter().fold(Vector3::zeros(), |a, v| a + v) / n as f64;
        for v in &mut velocities {
            *v -= mean;
        }
        ParticleState {
            positions,
            velocities,
        }
    }

    /// The block boundaries of one trajectory from `start`: `blocks + 1` states, `block_steps`
    /// steps apart.
    ///
    /// # Errors
    /// `InvalidParameter` for a bad config; `SimulationDiverged` if the potential blows up.
    pub fn trajectory(&self, start: ParticleState) -> Result<Vec<ParticleState>, Error> {
        self.check()?;
        let potential = self.potential;
        let mut field = |x: &[Vector3<f64>]| Ok(energy_and_forces(&potential, x, &[]));
        let mut state = start;
        let mut verlet = VelocityVerlet::new(self.dt, &state, &mut field)?;
        let mut out = vec![state.clone()];
        for _ in 0..self.blocks {
            for _ in 0..self.block_steps {
                verlet.step(&mut state, &mut field)?;
            }
            out.push(state.clone());
        }
        Ok(out)
    }

    /// The train/val/test data set for `seed` (one stream per split); `progress` is called after
    /// each trajectory. Sample counts are trajectories × blocks.
    ///
    /// # Errors
    /// As [`DynamicsConfig::trajectory`].
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
            let mut rng = split_rng(seed ^ 0xD1A5, index as u64);
            let mut samples = Vec::with_capacity(count * self.blocks);
            for _ in 0..count {
                let states = self.trajectory(self.initial_state(&mut rng))?;
                for pair in states.windows(2) {
                    samples.push(Sample {
                        positions: pair[0].positions.clone(),
                        velocities: pair[0].velocities.clone(),
                        features: Vec::new(),
                        target_positions: pair[1].positions.clone(),
                        energy: None,
                        forces: Vec::new(),
                    });
                }
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
        let mut config = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = config.as_object_mut() {
            map.insert("potential".into(), format!("{:?}", self.potential).into());
        }
        Ok(DatasetFile {
            kind: DatasetKind::Dynamics,
            seed,
            config: config.to_string(),
            splits,
        })
    }
}
