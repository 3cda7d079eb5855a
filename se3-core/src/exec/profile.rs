//! Per-operator timing of a compiled graph, for benchmarks: [`Instrument`] is a compiler pass
//! (run it after [`CpuCompiler`](super::CpuCompiler)) that wraps every operator in [`Timed`],
//! which records the wall time of each `process` call under the operator's kind (its type name,
//! or the label a fused op reports) together with its input shapes.
//!
//! ```
//! use luminal::prelude::*;
//! use se3_core::exec::{profile, CpuCompiler, InputKind, Session};
//! let mut s = Session::new();
//! let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Values);
//! s.output("y", (x * 2.0).exp());
//! s.compile_with((CpuCompiler::default(), profile::Instrument));
//! s.set("x", vec![0.5; 30], &[10, 3])?;
//! profile::reset();
//! s.run()?;
//! assert!(!profile::records().is_empty());
//! # Ok::<(), se3_core::Error>(())
//! ```
//!
//! Timings go to a process-wide list ([`records`], cleared by [`reset`]); instrument only the
//! session being measured.

use std::sync::Mutex;
use std::time::Instant;

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

/// One timed operator call: kind, input shapes, seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The operator's kind: the first word of its `Debug` form (`MatMul`, `FusedElementwise`,
    /// `EdgeContract[sum]`, ...).
    pub kind: String,
    /// Logical shapes of the inputs.
    pub shapes: Vec<Vec<usize>>,
    /// Wall time of the call.
    pub seconds: f64,
}

static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());
static DETAILS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether some graph was instrumented (fused kernels then also report [`detail`] timings).
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Adds `seconds` of thread time to the named part of a fused kernel (e.g. the gathers inside
/// `edge_contract`); summed over threads, so compare parts by their shares.
pub fn detail(name: &'static str, seconds: f64) {
    if let Ok(mut d) = DETAILS.lock() {
        match d.iter_mut().find(|x| x.0 == name) {
            Some(x) => x.1 += seconds,
            None => d.push((name, seconds)),
        }
    }
}

/// The [`detail`] totals since the last [`reset`].
pub fn details() -> Vec<(&'static str, f64)> {
    DETAILS.lock().map(|d| d.clone()).unwrap_or_default()
}

/// Clears the recorded timings.
pub fn reset() {
    if let Ok(mut r) = RECORDS.lock() {
        r.clear();
    }
    if let Ok(mut d) = DETAILS.lock() {
        d.clear();
    }
}

/// The timings recorded since the last [`reset`], in execution order.
pub fn records() -> Vec<Record> {
    RECORDS.lock().map(|r| r.clone()).unwrap_or_default()
}

/// Total seconds and calls per kind, largest first.
pub fn by_kind(records: &[Record]) -> Vec<(String, f64, usize)> {
    totals(records, |r| r.kind.clone())
}

/// Total seconds and calls per kind and input shapes (`"<kind> <shapes>"`), largest first:
/// which calls of a kind are the heavy ones.
pub fn by_kind_and_shapes(records: &[Record]) -> Vec<(String, f64, usize)> {
    totals(records, |r| format!("{} {:?}", r.kind, r.shapes))
}

/// `(key, seconds, calls)` summed over the records of each key, largest first.
fn totals(records: &[Record], key: impl Fn(&Record) -> String) -> Vec<(String, f64, usize)> {
    let mut acc: Vec<(String, f64, usize)> = Vec::new();
    for r in records {
        let k = key(r);
        match acc.iter_mut().find(|a| a.0 == k) {
            Some(a) => {
                a.1 += r.seconds;
                a.2 += 1;
            }
            None => acc.push((k, r.seconds, 1)),
        }
    }
    acc.sort_by(|a, b| b.1.total_cmp(&a.1));
    acc
}

fn kind_of(op: &dyn Operator) -> String {
    let dbg = format!("{op:?}");
    let end = dbg
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '[' || c == ']'))
        .unwrap_or(dbg.len());
    dbg[..end].to_string()
}

/// An operator whose calls are timed (see the module doc).
pub struct Timed {
    inner: Box<dyn Operator>,
    kind: String,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl PartialEq for Timed {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Operator for Timed {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let shapes = inp
            .iter()
            .map(|(_, st)| super::view::View::new(st, &empty).shape())
            .collect();
        let t = Instant::now();
        let out = self.inner.process(inp);
        let seconds = t.elapsed().as_secs_f64();
        if let Ok(mut r) = RECORDS.lock() {
            r.push(Record {
                kind: self.kind.clone(),
                shapes,
                seconds,
            });
        }
        out
    }

    fn custom(
        &mut self,
        key: &str,
        input: Box<dyn std::any::Any>,
    ) -> Option<Box<dyn std::any::Any>> {
        self.inner.custom(key, input)
    }
}

/// Compiler pass wrapping every operator in [`Timed`] (run it last).
#[derive(Debug, Default)]
pub struct Instrument;

impl Compiler for Instrument {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _remap: T) {
        ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        // `SE3_PROFILE_SOURCES`: each kind also names its inputs' kinds and views (which
        // axes broadcast), to tell apart operators of the same kind and shapes
        let sources = std::env::var_os("SE3_PROFILE_SOURCES").is_some();
        for id in nodes {
            let from = if sources {
                let srcs: Vec<String> = graph
                    .get_sources(id)
                    .iter()
                    .map(|(s, _, st)| {
                        let fake: String = (0..st.len())
                            .map(|a| if st.fake[st.indexes[a]] { 'b' } else { '.' })
                            .collect();
                        format!("{}:{fake}", kind_of(graph.graph[*s].as_ref()))
                    })
                    .collect();
                format!("<-({})", srcs.join(","))
            } else {
                String::new()
            };
            if let Some(w) = graph.graph.node_weight_mut(id) {
                let inner: Box<dyn Operator> =
                    std::mem::replace(w, Box::new(luminal::op::Print(String::new())));
                let kind = kind_of(inner.as_ref()) + &from;
                *w = Box::new(Timed { inner, kind });
            }
        }
    }
}
