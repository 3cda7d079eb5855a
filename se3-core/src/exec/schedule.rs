//! A memory-aware execution order for a compiled luminal graph, and the loop that runs it.
//!
//! Luminal runs a graph in `petgraph::toposort` order, which knows nothing of tensor sizes: in a
//! model of many parallel branches (degree pairs, heads, layers) it may produce the large
//! intermediates of every branch before consuming any, so the peak holds all of them at once
//! (the SE(3)-Transformer at 3 degrees: 416 MiB of `[n, F, 128]` products alive together).
//! [`Schedule::new`] orders the nodes instead as follows: of the nodes whose inputs are ready, run
//! first any that releases at least as many bytes as it allocates (it is the last consumer of
//! inputs at least as large as its outputs), else the node built first (lowest node index: the
//! order in which the layers built the graph, i.e. the model's program order, which a compiler
//! pass keeps roughly since a fused node reuses the index of a node it replaced). A node computed
//! from resident weights alone (a weight's permuted copy) runs only when no other node is ready,
//! so it is made just before it is needed instead of at the start with every other such copy. A purely greedy
//! `freed - allocated` order was tried and is worse (it starts cheap-looking branches of later
//! layers early). Sizes are the physical element counts of the node's outgoing views at the
//! current dynamic dimensions, so a schedule is made per set of dimension sizes.
//!
//! [`execute`] runs the nodes in that order with luminal's own rules (a node whose output is
//! present is skipped; an input is moved into its last consumer unless it is kept; everything
//! not kept is dropped at the end), and measures the bytes alive: [`MemoryStats`].

use luminal::op::InputTensor;
use luminal::prelude::petgraph::graph::EdgeIndex;
use luminal::prelude::petgraph::visit::{EdgeRef, IntoEdgeReferences};
use luminal::prelude::petgraph::Direction;
use luminal::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::Error;

/// A node's inputs in order: source node and output index, and the edge that carries the view
/// it is read through (an index: a `ShapeTracker` is 5 KiB).
type Sources = Vec<((NodeIndex, u8), EdgeIndex)>;

/// Memory figures of one run, bytes of f32 tensor data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Kept tensors at the start of the run (resident weights).
    pub resident: usize,
    /// The most bytes of run inputs and intermediates alive at once, counted at each operator as
    /// everything alive before it plus its outputs (its inputs are freed only after it).
    pub peak_intermediates: usize,
    /// Bytes the buffer pool held free at that moment ([`crate::exec::pool`]).
    pub pooled_at_peak: usize,
    /// Operators run.
    pub steps: usize,
}

/// An execution order of a graph for given dynamic dimension sizes.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// The dimension sizes it was made for, sorted.
    pub(crate) dims: Vec<(char, usize)>,
    steps: Vec<(NodeIndex, Sources)>,
}

/// Bytes of an f32 buffer (other tensor types count 0).
/// Bytes of a tensor's f32 data (its length, not its buffer's capacity: a buffer reused from the
/// pool may be up to twice as long as the tensor, which the pool's figures account for, so the
/// order's figures do not depend on what earlier runs left in the pool).
fn tensor_bytes(t: &Tensor) -> usize {
    t.data
        .as_any()
        .downcast_ref::<Vec<f32>>()
        .map_or(0, |v| v.len() * std::mem::size_of::<f32>())
}

/// Physical elements of a view at the dimension sizes `dims` (fake, i.e. expanded, axes excluded).
fn physical_elems(st: &ShapeTracker, dims: &FxHashMap<char, usize>, stack: &mut Vec<i32>) -> usize {
    st.dims
        .iter()
        .zip(st.fake.iter())
        .filter(|(_, fake)| !**fake)
        .map(|(d, _)| d.exec_stack(dims, stack).unwrap_or(1))
        .product()
}

fn sorted_dims(dims: &FxHashMap<char, usize>) -> Vec<(char, usize)> {
    let mut v: Vec<(char, usize)> = dims.iter().map(|(c, s)| (*c, *s)).collect();
    v.sort_unstable();
    v
}

impl Schedule {
    /// The greedy memory-aware order (module doc) of the nodes of `graph` whose outputs are not
    /// present yet, at its current dynamic dimension sizes.
    pub(crate) fn new(graph: &Graph) -> Schedule {
        let g = &graph.graph;
        let dims = &graph.dyn_map;
        let present = |n: NodeIndex| graph.tensors.contains_key(&(n, 0));
        let mut stack = Vec::new();
        // bytes of each (node, output), remaining data consumers, inputs of each node
        let mut size: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
        let mut consumers: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
        let mut sources: FxHashMap<NodeIndex, Sources> = FxHashMap::default();
        let mut waiting: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        let mut alloc: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        for n in g.node_indices() {
            let mut srcs: Vec<(u8, (NodeIndex, u8), EdgeIndex)> = Vec::new();
            let mut preds = 0;
            for e in g.edges_directed(n, Direction::Incoming) {
                if !present(e.source()) {
                    preds += 1;
                }
                if let Some((inp, out, _)) = e.weight().as_data() {
                    srcs.push((inp, (e.source(), out), e.id()));
                }
            }
            srcs.sort_by_key(|s| s.0);
            sources.insert(n, srcs.into_iter().map(|(_, id, st)| (id, st)).collect());
            waiting.insert(n, preds);
            for e in g.edges_directed(n, Direction::Outgoing) {
                if let Some((_, out, st)) = e.weight().as_data() {
                    let b = physical_elems(&st, dims, &mut stack) * std::mem::size_of::<f32>();
                    let s = size.entry((n, out)).or_insert(0);
                    *s = (*s).max(b);
                    *consumers.entry((n, out)).or_insert(0) += 1;
                }
            }
        }
        for ((n, _), b) in &size {
            *alloc.entry(*n).or_insert(0) += b;
        }
        // nodes computed from resident weights and constants alone (a weight's permuted copy,
        // say): ready from the start, they run only when nothing else is, the one whose
        // consumer waits for it alone first, so that each is made just before its consumer
        // rather than all at once at the start of the run
        let mut weight_only: FxHashSet<NodeIndex> = FxHashSet::default();
        if let Ok(order) = luminal::prelude::petgraph::algo::toposort(g, None) {
            for n in order {
                let srcs = &sources[&n];
                // a node without inputs that is not present (not an input slot) is a constant
                let from_weights = !present(n)
                    && srcs.iter().all(|((m, _), _)| {
                        (present(*m) && graph.no_delete.contains(m)) || weight_only.contains(m)
                    });
                if from_weights {
                    weight_only.insert(n);
                }
            }
        }
        let mut ready: Vec<NodeIndex> = g
            .node_indices()
            .filter(|&n| !present(n) && waiting.get(&n) == Some(&0))
            .collect();
        let mut steps = Vec::new();
        let mut counted: FxHashSet<(NodeIndex, u8)> = FxHashSet::default();
        while !ready.is_empty() {
            let mut best = 0;
            let mut best_key = (false, false, false, 0);
            for (i, &n) in ready.iter().enumerate() {
                counted.clear();
                let mut freed = 0usize;
                let srcs = &sources[&n];
                for (id, _) in srcs {
                    if !counted.insert(*id) || graph.no_delete.contains(&id.0) {
                        continue;
                    }
                    let uses = srcs.iter().filter(|(j, _)| j == id).count();
                    if consumers.get(id) == Some(&uses) {
                        freed += size.get(id).copied().unwrap_or(0);
                    }
                }
                let made = alloc.get(&n).copied().unwrap_or(0);
                let from_weights = weight_only.contains(&n);
                // of the nodes made from weights, first one whose consumer waits for it alone
                let unblocks = from_weights
                    && g.edges_directed(n, Direction::Outgoing).any(|e| {
                        let m = e.target();
                        let from_n = g.edges_connecting(n, m).count();
                        waiting.get(&m) == Some(&from_n)
                    });
                let key = (
                    !from_weights,
                    unblocks,
                    freed > 0 && freed >= made,
                    usize::MAX - n.index(),
                );
                if key > best_key {
                    best_key = key;
                    best = i;
                }
            }
            let n = ready.swap_remove(best);
            for (id, _) in &sources[&n] {
                if let Some(c) = consumers.get_mut(id) {
                    *c = c.saturating_sub(1);
                }
            }
            for e in g.edges_directed(n, Direction::Outgoing) {
                let m = e.target();
                if let Some(w) = waiting.get_mut(&m) {
                    *w = w.saturating_sub(1);
                    if *w == 0 && !present(m) {
                        ready.push(m);
                    }
                }
            }
            steps.push((n, sources[&n].clone()));
        }
        Schedule {
            dims: sorted_dims(dims),
            steps,
        }
    }

    /// The most bytes of inputs and intermediates alive at once when this schedule runs on
    /// `graph` at its current dimension sizes, from the shapes alone (nothing is run or
    /// allocated): the count of [`execute`] (everything alive before a node plus its outputs; an
    /// output dies after its last consumer unless kept), with each output sized as in
    /// [`Schedule::new`] (its largest outgoing view).
    pub(crate) fn simulated_peak(&self, graph: &Graph) -> usize {
        let g = &graph.graph;
        let mut stack = Vec::new();
        let mut size: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
        let mut consumers: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
        for e in g.edge_references() {
            if let Some((_, out, st)) = e.weight().as_data() {
                let b =
                    physical_elems(&st, &graph.dyn_map, &mut stack) * std::mem::size_of::<f32>();
                let s = size.entry((e.source(), out)).or_insert(0);
                *s = (*s).max(b);
                *consumers.entry((e.source(), out)).or_insert(0) += 1;
            }
        }
        let mut made_by: FxHashMap<NodeIndex, usize> = FxHashMap::default();
        for ((n, _), b) in &size {
            *made_by.entry(*n).or_insert(0) += b;
        }
        // what the run holds and frees: the nodes it makes and the inputs set before it
        let mut produced: FxHashSet<NodeIndex> = self.steps.iter().map(|(n, _)| *n).collect();
        let mut live = 0usize;
        for (n, _) in graph.tensors.keys() {
            if !graph.no_delete.contains(n) && produced.insert(*n) {
                live += made_by.get(n).copied().unwrap_or(0);
            }
        }
        let mut peak = live;
        for (n, srcs) in &self.steps {
            let made = made_by.get(n).copied().unwrap_or(0);
            peak = peak.max(live + made);
            live += made;
            for (id, _) in srcs {
                if let Some(c) = consumers.get_mut(id) {
                    *c = c.saturating_sub(1);
                    if *c == 0 && produced.contains(&id.0) && !graph.no_delete.contains(&id.0) {
                        live = live.saturating_sub(size.get(id).copied().unwrap_or(0));
                    }
                }
            }
        }
        peak
    }

    /// Whether this schedule was made for the current dimension sizes of `graph`.
    pub(crate) fn fits(&self, graph: &Graph) -> bool {
        self.dims == sorted_dims(&graph.dyn_map)
    }
}

/// Runs `graph` in the order of `schedule` (module doc); returns what was alive at the peak.
/// `high_water` is the most bytes of intermediates alive at once so far (raised by this run):
/// before each operator the buffer pool may keep only the headroom below it
/// ([`super::pool::set_budget`]), so pooled idle buffers never lift the peak above it.
///
/// # Errors
/// `MissingIntermediate` if a node's input was not produced (a schedule of another graph).
pub(crate) fn execute(
    graph: &mut Graph,
    schedule: &Schedule,
    high_water: &mut usize,
) -> Result<MemoryStats, Error> {
    let Graph {
        tensors,
        dyn_map,
        graph: g,
        no_delete,
        ..
    } = graph;
    let mut consumers: FxHashMap<(NodeIndex, u8), usize> = FxHashMap::default();
    for e in (&*g).edge_references() {
        if let Some((_, out, _)) = e.weight().as_data() {
            *consumers.entry((e.source(), out)).or_insert(0) += 1;
        }
    }
    let mut stats = MemoryStats::default();
    let mut live = 0usize;
    for ((n, _), t) in tensors.iter() {
        if no_delete.contains(n) {
            stats.resident += tensor_bytes(t);
        } else {
            live += tensor_bytes(t);
        }
    }
    let mut stack = Vec::new();
    super::pool::set_slack_for(*high_water);
    let trace = std::env::var_os("SE3_MEM_TRACE").is_some();
    let mut peak_trace = String::new();
    for (node, src_ids) in &schedule.steps {
        if tensors.contains_key(&(*node, 0)) {
            continue;
        }
        super::pool::set_budget(high_water.saturating_sub(live));
        let mut owned: Vec<Option<Tensor>> = Vec::with_capacity(src_ids.len());
        for (id, _) in src_ids {
            let last = consumers.get(id) == Some(&1) && !no_delete.contains(&id.0);
            owned.push(if last { tensors.remove(id) } else { None });
        }
        let freed: usize = owned.iter().flatten().map(tensor_bytes).sum();
        let mut srcs = Vec::with_capacity(src_ids.len());
        for ((id, edge), o) in src_ids.iter().zip(owned) {
            let mut st = g
                .edge_weight(*edge)
                .and_then(|d| d.as_data())
                .map(|(_, _, st)| st)
                .ok_or(Error::MissingIntermediate { node: id.0.index() })?;
            st.resolve_global_dyn_dims_stack(dyn_map, &mut stack);
            let t = match o {
                Some(t) => InputTensor::Owned(t),
                None => InputTensor::Borrowed(
                    tensors
                        .get(id)
                        .ok_or(Error::MissingIntermediate { node: id.0.index() })?,
                ),
            };
            srcs.push((t, st));
        }
        let op = g
            .node_weight_mut(*node)
            .ok_or(Error::MissingIntermediate { node: node.index() })?;
        crate::device::check_inputs(op.as_mut(), srcs.iter().map(|(t, st)| (t.borrowed(), st)))?;
        let outs = op.process(srcs);
        let made: usize = outs.iter().map(tensor_bytes).sum();
        if live + made > stats.peak_intermediates {
            stats.peak_intermediates = live + made;
            stats.pooled_at_peak = super::pool::pooled_bytes();
            if trace {
                let mut alive: Vec<(usize, String)> = tensors
                    .iter()
                    .filter(|((m, _), _)| !no_delete.contains(m))
                    .map(|((m, _), t)| {
                        let name = g
                            .node_weight(*m)
                            .map(|o| format!("{o:?}"))
                            .unwrap_or_default();
                        (tensor_bytes(t), name.chars().take(60).collect())
                    })
                    .filter(|(b, _)| *b >= 1 << 20)
                    .collect();
                alive.sort();
                let op = g
                    .node_weight(*node)
                    .map(|o| format!("{o:?}"))
                    .unwrap_or_default();
                peak_trace = format!(
                    "peak {:.1} MiB at step {} ({}, made {:.1} MiB, pooled {:.1} MiB): {:?}",
                    stats.peak_intermediates as f64 / 1048576.0,
                    stats.steps,
                    op.chars().take(60).collect::<String>(),
                    made as f64 / 1048576.0,
                    stats.pooled_at_peak as f64 / 1048576.0,
                    alive
                        .iter()
                        .map(|(b, n)| format!("{:.1} {n}", *b as f64 / 1048576.0))
                        .collect::<Vec<_>>()
                );
            }
        }
        *high_water = (*high_water).max(live + made);
        live = (live + made).saturating_sub(freed);
        for (i, t) in outs.into_iter().enumerate() {
            tensors.insert((*node, i as u8), t);
        }
        for (id, _) in src_ids {
            if let Some(c) = consumers.get_mut(id) {
                *c = c.saturating_sub(1);
            }
        }
        stats.steps += 1;
    }
    if trace {
        eprintln!("{peak_trace}");
    }
    graph.reset();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::{InputKind, Session};
    use crate::Error;

    const BRANCHES: usize = 8;
    const WIDE: usize = 256;

    /// `x [n, 4]` through `BRANCHES` branches, each a product with a `[4, WIDE]` weight to a
    /// wide `[n, WIDE]` tensor reduced back to `[n]`, summed.
    fn branches(s: &mut Session) {
        let x = s.input::<(Dyn<'n'>, Const<4>)>("x", InputKind::Values);
        let mut acc: Option<GraphTensor<(Dyn<'n'>,)>> = None;
        for b in 0..BRANCHES {
            let w = s.weight::<(Const<4>, Const<WIDE>)>(&format!("w{b}"));
            let wide = x.matmul(w).sin();
            let back = wide.sum_reduce::<_, Axis<1>>();
            acc = Some(match acc {
                Some(a) => a + back,
                None => back,
            });
        }
        if let Some(a) = acc {
            s.output("y", a);
        }
    }

    fn run(luminal_order: bool, x: &[f32], n: usize) -> Result<(Vec<f32>, Session), Error> {
        let mut s = Session::new();
        branches(&mut s);
        s.compile();
        s.set_luminal_order(luminal_order);
        for b in 0..BRANCHES {
            let w = (0..4 * WIDE).map(|i| ((i * (b + 3)) % 17) as f32 / 17.0 - 0.5);
            s.set_weight(&format!("w{b}"), w.collect(), &[4, WIDE])?;
        }
        s.set("x", x.to_vec(), &[n, 4])?;
        s.run()?;
        Ok((s.get("y")?.data, s))
    }

    #[test]
    fn memory_order_gives_the_values_of_luminal_order() -> Result<(), Error> {
        let (mut r, seed) = crate::testing::rng();
        let n = r.gen_range(5..40);
        let x: Vec<f32> = (0..n * 4).map(|_| r.gen_range(-1.0..1.0)).collect();
        let (ours, _) = run(false, &x, n)?;
        let (theirs, _) = run(true, &x, n)?;
        assert_eq!(ours, theirs, "seed {seed}");
        Ok(())
    }

    #[test]
    fn memory_order_keeps_one_wide_branch_alive_at_a_time() -> Result<(), Error> {
        let (mut r, seed) = crate::testing::rng();
        let n = r.gen_range(64..128);
        let x: Vec<f32> = (0..n * 4).map(|_| r.gen_range(-1.0..1.0)).collect();
        let (_, s) = run(false, &x, n)?;
        let wide = n * WIDE * 4;
        let m = s.memory_stats();
        assert!(m.steps > 0, "seed {seed}: nothing ran");
        assert!(
            m.peak_intermediates >= wide && m.peak_intermediates < 3 * wide,
            "seed {seed}: peak {} bytes, one wide tensor is {wide} (an operator holds its input \
             and output: two)",
            m.peak_intermediates
        );
        Ok(())
    }
}
