//! Molecular dynamics with any force field (analytic or learned), reporting energy drift.

use super::integrator::{ForceField, ParticleState, VelocityVerlet};
use super::potential::kinetic_energy;
use crate::Error;

/// The energies of an MD run and its drift.
#[derive(Clone, Debug, PartialEq)]
pub struct MdReport {
    /// Step index of each record (0 = the start).
    pub steps: Vec<usize>,
    pub potential_energy: Vec<f64>,
    pub kinetic_energy: Vec<f64>,
    /// E = U + K at each record.
    pub total_energy: Vec<f64>,
    /// max_t |E(t) − E(0)| / atoms: the largest energy excursion per atom.
    pub max_drift_per_atom: f64,
    /// (E(end) − E(0)) / atoms: the net drift per atom.
    pub net_drift_per_atom: f64,
    /// The state at the end.
    pub state: ParticleState,
}

/// Runs `steps` velocity-Verlet steps of size `dt` from `state` under `field` (unit masses),
/// recording the energies every `record_every` steps and at the end.
///
/// A conservative force field (F = −∇U, exactly) keeps E = U + K constant up to the
/// integrator's O(dt²) oscillation; a systematic drift means non-conservative forces (a learned
/// model whose forces are not its energy's gradient) or a step too large.
///
/// # Errors
/// `InvalidParameter` for `dt` ≤ 0, `record_every` = 0 or velocities that do not match the
/// positions; the field's errors; `SimulationDiverged` for non-finite forces.
pub fn run_md(
    field: &mut impl ForceField,
    state: ParticleState,
    dt: f64,
    steps: usize,
    record_every: usize,
) -> Result<MdReport, Error> {
    if record_every == 0
        || state.velocities.len() != state.positions.len()
        || state.positions.is_empty()
    {
        return Err(Error::InvalidParameter {
            name: "record_every/velocities",
            expected: "record_every >= 1 and one velocity per position (at least one atom)",
            found: format!(
                "record_every {record_every}, {} velocities for {} positions",
                state.velocities.len(),
                state.positions.len()
            ),
        });
    }
    let mut state = state;
    let mut verlet = VelocityVerlet::new(dt, &state, field)?;
    let mut report = MdReport {
        steps: Vec::new(),
        potential_energy: Vec::new(),
        kinetic_energy: Vec::new(),
        total_energy: Vec::new(),
        max_drift_per_atom: 0.0,
        net_drift_per_atom: 0.0,
        state: state.clone(),
    };
    let record = |step: usize, u: f64, state: &ParticleState, report: &mut MdReport| {
        let k = kinetic_energy(&state.velocities);
        report.steps.push(step);
        report.potential_energy.push(u);
        report.kinetic_energy.push(k);
        report.total_energy.push(u + k);
    };
    record(0, verlet.potential_energy(), &state, &mut report);
    for step in 1..=steps {
        verlet.step(&mut state, field)?;
        if step % record_every == 0 || step == steps {
            record(step, verlet.potential_energy(), &state, &mut report);
        }
    }
    let atoms = state.positions.len() as f64;
    let e0 = report.total_energy[0];
    report.max_drift_per_atom = report
        .total_energy
        .iter()
        .map(|e| (e - e0).abs())
        .fold(0.0, f64::max)
        / atoms;
    report.net_drift_per_atom = (report.total_energy.last().copied().unwrap_or(e0) - e0) / atoms;
    report.state = state;
    Ok(report)
}
