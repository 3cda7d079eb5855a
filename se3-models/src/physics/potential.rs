//! Pairwise potentials and the energy and forces of a configuration under one.

use nalgebra::Vector3;

/// A radially symmetric pair potential u(r) between two particles at distance r.
///
/// The energy of a configuration is U = Σ_{i<j} u(|x_i − x_j|; q_i q_j), the force on particle i
/// is F_i = −∂U/∂x_i = −Σ_{j≠i} u'(r_ij) (x_i − x_j)/r_ij. Every variant depends on the distance
/// only, so U is invariant and F equivariant under rotations, translations and reflections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PairPotential {
    /// Coulomb: u(r) = strength · q_i q_j / r (like charges repel). No softening and no cut-off,
    /// as in the NRI / EGNN charged-particle generator.
    Coulomb { strength: f64 },
    /// Harmonic spring with a rest length: u(r) = stiffness/2 · (r − rest_length)².
    Spring { stiffness: f64, rest_length: f64 },
    /// Lennard-Jones: u(r) = 4ε((σ/r)¹² − (σ/r)⁶), minimum −ε at r = 2^(1/6) σ.
    LennardJones { epsilon: f64, sigma: f64 },
    /// Morse: u(r) = depth · ((1 − e^(−width (r − r0)))² − 1), minimum −depth at r = r0.
    Morse { depth: f64, width: f64, r0: f64 },
}

impl PairPotential {
    /// u(r) and du/dr at distance `r` for a pair whose charge product is `charge_product`
    /// (only `Coulomb` uses it).
    pub fn energy_and_derivative(&self, r: f64, charge_product: f64) -> (f64, f64) {
        match *self {
            PairPotential::Coulomb { strength } => {
                let u = strength * charge_product / r;
                (u, -u / r)
            }
            PairPotential::Spring {
                stiffness,
                rest_length,
            } => {
                let stretch = r - rest_length;
                (0.5 * stiffness * stretch * stretch, stiffness * stretch)
            }
            PairPotential::LennardJones { epsilon, sigma } => {
                let s6 = (sigma / r).powi(6);
                let s12 = s6 * s6;
                (
                    4.0 * epsilon * (s12 - s6),
                    4.0 * epsilon * (-12.0 * s12 + 6.0 * s6) / r,
                )
            }
            PairPotential::Morse { depth, width, r0 } => {
                let e = (-width * (r - r0)).exp();
                let one_minus = 1.0 - e;
                (
                    depth * (one_minus * one_minus - 1.0),
                    2.0 * depth * one_minus * width * e,
                )
            }
        }
    }
}

/// Total potential energy U and forces F_i = −∂U/∂x_i of `positions` under `potential`.
///
/// `charges` gives q_i per particle (pass an empty slice for uncharged potentials: every charge
/// product is then 1). O(n²) over all pairs; coincident particles give non-finite values, which
/// the simulators report as divergence.
pub fn energy_and_forces(
    potential: &PairPotential,
    positions: &[Vector3<f64>],
    charges: &[f64],
) -> (f64, Vec<Vector3<f64>>) {
    let n = positions.len();
    let mut forces = vec![Vector3::zeros(); n];
    let mut energy = 0.0;
    for i in 0..n {
        for j in (i + 1)..n {
            let d = positions[i] - positions[j];
            let r = d.norm();
            let qq = if charges.is_empty() {
                1.0
            } else {
                charges[i] * charges[j]
            };
            let (u, du) = potential.energy_and_derivative(r, qq);
            energy += u;
            let f = d * (-du / r);
            forces[i] += f;
            forces[j] -= f;
        }
    }
    (energy, forces)
}

/// Kinetic energy Σ_i ½ m v_i² of unit-mass particles.
pub fn kinetic_energy(velocities: &[Vector3<f64>]) -> f64 {
    velocities.iter().map(|v| 0.5 * v.norm_squared()).sum()
}

/// Total linear momentum Σ_i v_i of unit-mass particles.
pub fn momentum(velocities: &[Vector3<f64>]) -> Vector3<f64> {
    velocities.iter().fold(Vector3::zeros(), |acc, v| acc + v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng};

    fn cloud(rng: &mut StdRng, n: usize, scale: f64) -> Vec<Vector3<f64>> {
        (0..n)
            .map(|_| Vector3::new(rng.gen(), rng.gen(), rng.gen()) * scale)
            .collect()
    }

    /// Central differences of U against the analytic forces, for every potential.
    #[test]
    fn forces_are_minus_energy_gradient() {
        let (mut rng, seed) = se3_core::testing::rng();
        let potentials = [
            PairPotential::Coulomb { strength: 1.0 },
            PairPotential::Spring {
                stiffness: 2.0,
                rest_length: 0.7,
            },
            PairPotential::LennardJones {
                epsilon: 1.0,
                sigma: 1.0,
            },
            PairPotential::Morse {
                depth: 1.0,
                width: 1.5,
                r0: 1.2,
            },
        ];
        for potential in potentials {
            // a spread-out cloud keeps LJ's r^-13 away from overflow
            let x = cloud(&mut rng, 6, 3.0);
            let charges: Vec<f64> = (0..6)
                .map(|_| if rng.gen::<bool>() { 1.0 } else { -1.0 })
                .collect();
            let (_, forces) = energy_and_forces(&potential, &x, &charges);
            let h = 1e-6;
            for i in 0..x.len() {
                for a in 0..3 {
                    let mut plus = x.clone();
                    plus[i][a] += h;
                    let mut minus = x.clone();
                    minus[i][a] -= h;
                    let up = energy_and_forces(&potential, &plus, &charges).0;
                    let um = energy_and_forces(&potential, &minus, &charges).0;
                    let numeric = -(up - um) / (2.0 * h);
                    let scale = forces[i].norm().max(1e-3);
                    // rounding of the two energies, amplified by 1/(2h): large when a close
                    // pair makes the total energy large (LJ's r^-12)
                    let rounding = 8.0 * f64::EPSILON * (up.abs() + um.abs()) / (2.0 * h);
                    assert!(
                        (numeric - forces[i][a]).abs() < 1e-5 * scale + rounding,
                        "seed {seed}, {potential:?}: particle {i} axis {a}: numeric {numeric}, analytic {}",
                        forces[i][a]
                    );
                }
            }
        }
    }

    #[test]
    fn minima_are_where_documented() {
        let lj = PairPotential::LennardJones {
            epsilon: 0.8,
            sigma: 1.1,
        };
        let (u, du) = lj.energy_and_derivative(2f64.powf(1.0 / 6.0) * 1.1, 1.0);
        assert!((u + 0.8).abs() < 1e-12 && du.abs() < 1e-12, "{u} {du}");
        let morse = PairPotential::Morse {
            depth: 0.5,
            width: 2.0,
            r0: 1.3,
        };
        let (u, du) = morse.energy_and_derivative(1.3, 1.0);
        assert!((u + 0.5).abs() < 1e-12 && du.abs() < 1e-12, "{u} {du}");
    }
}
