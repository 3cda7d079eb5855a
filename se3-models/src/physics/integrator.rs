//! Symplectic and thermostatted integrators for unit-mass particles under any force field.

use nalgebra::Vector3;
use rand::Rng;

use super::random::normal_vector;
use crate::Error;

/// Positions and velocities of unit-mass particles at one instant (same time for both).
#[derive(Clone, Debug, PartialEq)]
pub struct ParticleState {
    pub positions: Vec<Vector3<f64>>,
    pub velocities: Vec<Vector3<f64>>,
}

/// Potential energy and forces F_i = −∂U/∂x_i at some positions, or an error.
///
/// The analytic potentials ([`super::potential::energy_and_forces`]) and learned models both
/// fit this shape, so the integrators and the MD loop run either.
pub trait ForceField {
    /// (U, F) at `positions`.
    ///
    /// # Errors
    /// Whatever the force field reports (a model's input errors, for instance).
    fn energy_and_forces(
        &mut self,
        positions: &[Vector3<f64>],
    ) -> Result<(f64, Vec<Vector3<f64>>), Error>;
}

impl<F> ForceField for F
where
    F: FnMut(&[Vector3<f64>]) -> Result<(f64, Vec<Vector3<f64>>), Error>,
{
    fn energy_and_forces(
        &mut self,
        positions: &[Vector3<f64>],
    ) -> Result<(f64, Vec<Vector3<f64>>), Error> {
        self(positions)
    }
}

/// Forces and energy at the current positions, checked for finiteness (blow-up detection).
fn evaluate(
    field: &mut impl ForceField,
    positions: &[Vector3<f64>],
    step: usize,
) -> Result<(f64, Vec<Vector3<f64>>), Error> {
    let (energy, forces) = field.energy_and_forces(positions)?;
    if forces.len() != positions.len() {
        return Err(Error::InputShape {
            name: "forces",
            expected: format!("[{}, 3] (one force per particle)", positions.len()),
            found: vec![forces.len(), 3],
        });
    }
    if !energy.is_finite() || forces.iter().any(|f| !f.iter().all(|c| c.is_finite())) {
        return Err(Error::SimulationDiverged { step });
    }
    Ok((energy, forces))
}

/// Velocity Verlet (kick–drift–kick leapfrog) for unit masses, step `dt`:
/// v ← v + dt/2 F(x); x ← x + dt v; v ← v + dt/2 F(x).
///
/// Symplectic and time-reversible: energy errors stay bounded (O(dt²)) instead of drifting;
/// linear momentum is conserved exactly (to rounding) when Σ F = 0. Positions and velocities are
/// kept at the same time, unlike the NRI generator, which stores the half-step velocity.
#[derive(Clone, Debug)]
pub struct VelocityVerlet {
    dt: f64,
    forces: Vec<Vector3<f64>>,
    potential_energy: f64,
    steps: usize,
}

impl VelocityVerlet {
    /// An integrator for `state`, evaluating the forces there once.
    ///
    /// # Errors
    /// `InvalidParameter` if `dt` is not positive and finite; the force field's errors;
    /// `SimulationDiverged` for non-finite forces.
    pub fn new(dt: f64, state: &ParticleState, field: &mut impl ForceField) -> Result<Self, Error> {
        if !(dt > 0.0 && dt.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "dt",
                expected: "a positive finite time step",
                found: dt.to_string(),
            });
        }
        let (potential_energy, forces) = evaluate(field, &state.positions, 0)?;
        Ok(VelocityVerlet {
            dt,
            forces,
            potential_energy,
            steps: 0,
        })
    }

    /// Potential energy at the current positions.
    pub fn potential_energy(&self) -> f64 {
        self.potential_energy
    }

    /// Forces at the current positions.
    pub fn forces(&self) -> &[Vector3<f64>] {
        &self.forces
    }

    /// Advance `state` by one step.
    ///
    /// # Errors
    /// The force field's errors; `SimulationDiverged` for non-finite forces.
    pub fn step(
        &mut self,
        state: &mut ParticleState,
        field: &mut impl ForceField,
    ) -> Result<(), Error> {
        self.step_by(self.dt, state, field)
    }

    /// Advance `state` by one step of size `dt` instead of the integrator's own (sub-stepping
    /// through close encounters). Steps of varying size are accurate but no longer exactly
    /// symplectic.
    ///
    /// # Errors
    /// As [`VelocityVerlet::step`].
    pub fn step_by(
        &mut self,
        dt: f64,
        state: &mut ParticleState,
        field: &mut impl ForceField,
    ) -> Result<(), Error> {
        let half = 0.5 * dt;
        for (v, f) in state.velocities.iter_mut().zip(&self.forces) {
            *v += f * half;
        }
        for (x, v) in state.positions.iter_mut().zip(&state.velocities) {
            *x += v * dt;
        }
        self.steps += 1;
        let (energy, forces) = evaluate(field, &state.positions, self.steps)?;
        self.potential_energy = energy;
        self.forces = forces;
        for (v, f) in state.velocities.iter_mut().zip(&self.forces) {
            *v += f * half;
        }
        Ok(())
    }
}

/// Langevin dynamics by the BAOAB splitting (Leimkuhler–Matthews), unit masses, k_B = 1:
/// B: v += dt/2 F; A: x += dt/2 v; O: v ← c v + √((1 − c²) T) ξ with c = e^(−γ dt), ξ ~ N(0, I);
/// A; B. Samples the canonical distribution at temperature `temperature` (a thermostat for
/// generating configurations, not for energy-conserving runs).
#[derive(Clone, Debug)]
pub struct LangevinBaoab {
    dt: f64,
    temperature: f64,
    friction: f64,
    forces: Vec<Vector3<f64>>,
    potential_energy: f64,
    steps: usize,
}

impl LangevinBaoab {
    /// A thermostatted integrator for `state` at `temperature` with friction γ = `friction`.
    ///
    /// # Errors
    /// `InvalidParameter` for a non-positive `dt`, negative `temperature` or `friction`; the force
    /// field's errors.
    pub fn new(
        dt: f64,
        temperature: f64,
        friction: f64,
        state: &ParticleState,
        field: &mut impl ForceField,
    ) -> Result<Self, Error> {
        for (name, value, ok) in [
            ("dt", dt, dt > 0.0),
            ("temperature", temperature, temperature >= 0.0),
            ("friction", friction, friction >= 0.0),
        ] {
            if !(ok && value.is_finite()) {
                return Err(Error::InvalidParameter {
                    name,
                    expected: "a finite value (dt > 0, temperature and friction >= 0)",
                    found: value.to_string(),
                });
            }
        }
        let (potential_energy, forces) = evaluate(field, &state.positions, 0)?;
        Ok(LangevinBaoab {
            dt,
            temperature,
            friction,
            forces,
            potential_energy,
            steps: 0,
        })
    }

    /// Potential energy at the current positions.
    pub fn potential_energy(&self) -> f64 {
        self.potential_energy
    }

    /// Forces at the current positions.
    pub fn forces(&self) -> &[Vector3<f64>] {
        &self.forces
    }

    /// Advance `state` by one step, drawing the noise from `rng`.
    ///
    /// # Errors
    /// The force field's errors; `SimulationDiverged` for non-finite forces.
    pub fn step<R: Rng + ?Sized>(
        &mut self,
        state: &mut ParticleState,
        field: &mut impl ForceField,
        rng: &mut R,
    ) -> Result<(), Error> {
        let half = 0.5 * self.dt;
        let c = (-self.friction * self.dt).exp();
        let noise = ((1.0 - c * c) * self.temperature).sqrt();
        for (v, f) in state.velocities.iter_mut().zip(&self.forces) {
            *v += f * half;
        }
        for (x, v) in state.positions.iter_mut().zip(&state.velocities) {
            *x += v * half;
        }
        for v in state.velocities.iter_mut() {
            *v = *v * c + normal_vector(rng, noise);
        }
        for (x, v) in state.positions.iter_mut().zip(&state.velocities) {
            *x += v * half;
        }
        self.steps += 1;
        let (energy, forces) = evaluate(field, &state.positions, self.steps)?;
        self.potential_energy = energy;
        self.forces = forces;
        for (v, f) in state.velocities.iter_mut().zip(&self.forces) {
            *v += f * half;
        }
        Ok(())
    }
}
