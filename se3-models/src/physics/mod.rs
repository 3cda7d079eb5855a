//! Learning physics: simulators, data sets, batching and evaluation.
//!
//! * [`potential`]: pair potentials (Coulomb, spring, Lennard-Jones, Morse), energies and forces.
//! * [`integrator`]: velocity Verlet and Langevin BAOAB for any [`integrator::ForceField`].
//! * [`nbody`]: the charged N-body benchmark of the EGNN paper.
//! * [`dynamics`]: particle dynamics in blocks of steps (iterative SE(3)-Transformer study).
//! * [`lj_clusters`]: Lennard-Jones clusters with energies and forces at several temperatures.
//! * [`dataset`]: samples, splits and the `se3-physics-v1` safetensors format.
//! * [`batch`]: concatenated graph batches with graph ids, and padded batches with masks.
//! * [`metrics`]: position MSE, energy/force MAE, equivariance error of a model.
//! * [`learned_potential`]: an invariant energy model trained on energies and forces.
//! * [`potential_training`]: training a learned potential, its test errors, MD with it.
//! * [`iterative_se3t`]: the iterative SE(3)-Transformer for particle dynamics, with Adam.
//! * [`egnn_nbody`]: se3's EGNN for the N-body benchmark, trained with gradients and Adam.
//! * [`se3_nbody`]: se3's TFN and SE(3)-Transformer for the N-body benchmark, with Adam.
//! * [`nbody_model`]: what a model offers to the N-body loop (step, prediction, metrics).
//! * [`nbody_benchmark`]: the N-body benchmark run of any such model: loop, CSV, SVG, table.
//! * [`md`]: molecular dynamics with any force field, reporting energy drift.
//! * [`baselines`]: gradient-free reference predictors (constant velocity).
//! * [`report`]: CSV-ready metrics and SVG line charts of training curves.
//! * [`random`]: seeded normal variates and uniform rotations.

pub mod baselines;
pub mod batch;
pub mod dataset;
pub mod dynamics;
pub mod egnn_nbody;
pub mod integrator;
pub mod iterative_se3t;
pub mod learned_potential;
pub mod lj_clusters;
pub mod md;
pub mod metrics;
pub mod nbody;
pub mod nbody_benchmark;
pub mod nbody_model;
pub mod potential;
pub mod potential_training;
pub mod random;
pub mod report;
pub mod se3_nbody;
