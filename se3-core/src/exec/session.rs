//! [`Session`]: a luminal graph that is built once, compiled once with [`CpuCompiler`], and
//! run many times on inputs of any size.
//!
//! The session owns the graph in a `Box`, so the raw pointers luminal keeps into it (every
//! `GraphTensor` and `Constant` holds one) stay valid for its whole life. Inputs are checked at
//! the boundary and turned into typed [`Error`]s: names, ranks, fixed and dynamic axis sizes
//! (one size per dynamic dimension across all inputs), empty axes, non-finite coordinates,
//! masks that are not 0/1, and indices that are not integers in range. Dynamic dimensions are
//! set from the inputs on every run, so one compiled graph serves every input size. Weights
//! are resident: set once, kept across runs. Outputs of the previous run are dropped before
//! the next one (luminal would otherwise skip the nodes and return stale values).
//!
//! Memory: a run executes the nodes in a memory-aware order (`schedule`: net-releasing nodes
//! first, else build order) instead of luminal's, which bounds the buffer pool by the run's high
//! water, and reports [`MemoryStats`] ([`Session::memory_stats`]); compiling rebuilds the graph
//! without the vacant edge slots compiler passes leave (5 KiB each).
//!
//! ```
//! use luminal::prelude::*;
//! use se3_core::exec::{InputKind, Session};
//! let mut s = Session::new();
//! let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
//! let w = s.weight::<(Const<3>, Const<2>)>("w");
//! s.output("y", x.matmul(w) * 2.0);
//! s.compile();
//! s.set_weight("w", vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[3, 2])?;
//! for n in [1, 5] {
//!     s.set("x", vec![1.0; 3 * n], &[n, 3])?;
//!     s.run()?;
//!     let y = s.get("y")?;
//!     assert_eq!(y.shape, vec![n, 2]);
//!     assert_eq!(y.data[..2], [2.0, 2.0]);
//! }
//! # Ok::<(), se3_core::Error>(())
//! ```

use luminal::op::{InputTensor, Operator};
use luminal::prelude::petgraph::visit::EdgeRef;
use luminal::prelude::{symbolic::Expression, *};
use rustc_hash::FxHashMap;

use super::compiler::CpuCompiler;
use super::schedule::{self, MemoryStats, Schedule};
use super::view::View;
use crate::Error;

/// What an input holds, which decides how it is checked before a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InputKind {
    /// Features: any finite or non-finite f32 values are passed through.
    Values,
    /// Coordinates: every value must be finite.
    Coordinates,
    /// A mask: every value must be 0 or 1.
    Mask,
    /// Integer indices stored as f32 (exact below 2^24), each in `0..bound`, or `-1` for
    /// "no index" when `allow_missing`.
    Indices {
        bound: IndexBound,
        allow_missing: bool,
    },
}

/// The exclusive upper bound of an index input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexBound {
    /// The current size of a dynamic dimension.
    Dim(char),
    /// A fixed size.
    Fixed(usize),
}

#[derive(Debug)]
struct Slot {
    name: String,
    id: NodeIndex,
    dims: Vec<Expression>,
    kind: InputKind,
    resident: bool,
    pending: Option<(Vec<f32>, Vec<usize>)>,
    loaded: bool,
    /// A weight stored in the layout of the copies the graph made of it every run
    /// ([`Session::compile`]): each copying operator and the view it read the weight through,
    /// in order, applied to the values on [`Session::set_weight`].
    layout: Vec<(Box<dyn Operator>, ShapeTracker)>,
}

#[derive(Debug)]
struct OutSlot {
    name: String,
    /// Position in `ids` (node ids move when compilers replace nodes).
    id: usize,
    shape: ShapeTracker,
}

/// An output read back after a run: row-major data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

/// A compiled graph with checked inputs, resident weights and retrievable outputs.
pub struct Session {
    graph: Box<Graph>,
    slots: Vec<Slot>,
    outputs: Vec<OutSlot>,
    ids: Vec<NodeIndex>,
    fixed_dims: FxHashMap<char, usize>,
    derived_dims: Vec<(char, Expression)>,
    compiled: bool,
    stock: bool,
    ran: bool,
    /// The memory-aware execution order for the last dimension sizes ([`Schedule`]).
    schedule: Option<Schedule>,
    /// Run in luminal's own order instead (for comparisons).
    luminal_order: bool,
    /// Whether luminal's linearization is current (only luminal's order uses it).
    linearized: bool,
    /// The most bytes of intermediates alive at once in any run (bounds the buffer pool).
    high_water: usize,
    memory: MemoryStats,
    /// The backend whose compiler passes lower the graph (CPU unless [`Session::on`] chose).
    device: crate::Device,
    /// The opened device of a CUDA session.
    #[cfg(feature = "cuda")]
    cuda: Option<std::sync::Arc<super::cuda::CudaBackend>>,
    /// Advanced by every [`Session::set_weight`]: a CUDA session's device copies of its
    /// weights are made once and reused until it changes.
    #[cfg(feature = "cuda")]
    weights_epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field(
                "inputs",
                &self.slots.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field(
                "outputs",
                &self.outputs.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("nodes", &self.graph.graph.node_count())
            .finish()
    }
}

fn fixed(e: &Expression) -> Option<usize> {
    if e.to_symbols().is_empty() {
        e.to_usize()
    } else {
        None
    }
}

impl Session {
    /// An empty session; build its graph with [`Session::input`], [`Session::weight`] and
    /// luminal operations on the returned tensors.
    pub fn new() -> Session {
        Session {
            graph: Box::new(Graph::new()),
            slots: Vec::new(),
            outputs: Vec::new(),
            ids: Vec::new(),
            fixed_dims: FxHashMap::default(),
            derived_dims: Vec::new(),
            compiled: false,
            stock: false,
            ran: false,
            schedule: None,
            luminal_order: false,
            linearized: false,
            high_water: 0,
            memory: MemoryStats::default(),
            device: crate::Device::Cpu,
            #[cfg(feature = "cuda")]
            cuda: None,
            #[cfg(feature = "cuda")]
            weights_epoch: Default::default(),
        }
    }

    /// An empty session whose graph runs on `device`: the CPU compiler's passes, then the
    /// device backend's pass that swaps in its kernels and the copies between host and device.
    ///
    /// # Errors
    /// `CudaNotCompiled` (CUDA asked for without the `cuda` feature), `CudaUnavailable` (the
    /// driver library, NVRTC library, cuBLAS library or the device is missing).
    pub fn on(device: crate::Device) -> Result<Session, Error> {
        device.check()?;
        let mut s = Session::new();
        s.device = device;
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda { ordinal } = device {
            s.cuda = Some(super::cuda::CudaBackend::open(ordinal)?);
        }
        Ok(s)
    }

    /// Moves this session's kernels to `device` (from the CPU; a no-op for its own device):
    /// a compiled graph gets the device backend's pass now, an uncompiled one at its first
    /// run. On a CUDA device the weights are uploaded by the next run and stay there (later
    /// runs upload only the per-run inputs) until [`Session::set_weight`] changes them.
    ///
    /// # Errors
    /// `CudaNotCompiled` (without the `cuda` feature), `CudaUnavailable` (driver library,
    /// NVRTC library, cuBLAS library or device missing), `InvalidOp` to leave a device.
    pub fn set_device(&mut self, device: crate::Device) -> Result<(), Error> {
        if device == self.device {
            return Ok(());
        }
        device.check()?;
        if self.device != crate::Device::Cpu {
            return Err(Error::InvalidOp {
                op: "Session::set_device",
                problem: "a session on a device cannot move again; build a new session",
            });
        }
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda { ordinal } = device {
            let backend = super::cuda::CudaBackend::open(ordinal)?;
            self.cuda = Some(backend.clone());
            self.device = device;
            if self.compiled {
                // the CPU passes have run: the CUDA pass alone moves the compiled graph
                let pass = self.cuda_pass(backend);
                self.compile_with(pass);
            }
        }
        Ok(())
    }

    /// The CUDA pass of this session: its weights resident on the device.
    #[cfg(feature = "cuda")]
    fn cuda_pass(
        &self,
        backend: std::sync::Arc<super::cuda::CudaBackend>,
    ) -> super::cuda::CudaCompiler {
        let resident: Vec<NodeIndex> = self
            .slots
            .iter()
            .filter(|s| s.resident)
            .map(|s| s.id)
            .collect();
        super::cuda::CudaCompiler::new(backend).with_resident(resident, self.weights_epoch.clone())
    }

    /// The device this session's kernels run on.
    pub fn device(&self) -> crate::Device {
        self.device
    }

    /// The graph, for operations that need it directly (constants, `arange`, custom ops).
    /// Nodes added after compiling are compiled and scheduled by the next run (luminal alone
    /// would never run them).
    pub fn graph(&mut self) -> &mut Graph {
        self.compiled = false;
        &mut self.graph
    }

    fn add_slot<S: Shape>(
        &mut self,
        name: &str,
        kind: InputKind,
        resident: bool,
    ) -> GraphTensor<S> {
        let t = self.graph.named_tensor::<S>(name);
        if resident {
            self.graph.keep_tensors(t.id);
        }
        self.slots.push(Slot {
            name: name.to_string(),
            id: t.id,
            dims: S::realized_shape(),
            kind,
            resident,
            pending: None,
            loaded: false,
            layout: Vec::new(),
        });
        t
    }

    /// Like [`Session::input`], with the axis sizes given at run time (`shape`, fixed numbers
    /// or dynamic symbols) instead of by the type: for layers whose channel counts come from
    /// a run-time fiber (type those axes `Dyn<'-'>`).
    pub fn input_with_shape<S: Shape>(
        &mut self,
        name: &str,
        kind: InputKind,
        shape: &[Expression],
    ) -> GraphTensor<S> {
        let mut t = self.add_slot::<S>(name, kind, false);
        self.set_slot_shape(&mut t, shape);
        t
    }

    /// Like [`Session::weight`], with the axis sizes given at run time (see
    /// [`Session::input_with_shape`]).
    pub fn weight_with_shape<S: Shape>(
        &mut self,
        name: &str,
        shape: &[Expression],
    ) -> GraphTensor<S> {
        let mut t = self.add_slot::<S>(name, InputKind::Values, true);
        self.set_slot_shape(&mut t, shape);
        t
    }

    fn set_slot_shape<S: Shape>(&mut self, t: &mut GraphTensor<S>, shape: &[Expression]) {
        t.shape = ShapeTracker::new(shape);
        if let Some(slot) = self.slots.last_mut() {
            slot.dims = shape.to_vec();
        }
    }

    /// A per-run input of shape `S` (use `Dyn<'x'>` axes for sizes that change per run).
    pub fn input<S: Shape>(&mut self, name: &str, kind: InputKind) -> GraphTensor<S> {
        self.add_slot(name, kind, false)
    }

    /// A resident weight of shape `S`, set once with [`Session::set_weight`] or
    /// [`Session::load_safetensors`](crate::exec::Session::load_safetensors).
    pub fn weight<S: Shape>(&mut self, name: &str) -> GraphTensor<S> {
        self.add_slot(name, InputKind::Values, true)
    }

    /// Marks `t` as an output under `name`.
    pub fn output<S: Shape>(&mut self, name: &str, t: GraphTensor<S>) {
        self.compiled = false;
        t.retrieve();
        self.ids.push(t.id);
        self.outputs.push(OutSlot {
            name: name.to_string(),
            id: self.ids.len() - 1,
            shape: t.shape,
        });
    }

    /// Sets a dynamic dimension that no input determines (e.g. a derived edge count).
    pub fn set_dim(&mut self, dim: char, size: usize) {
        self.fixed_dims.insert(dim, size);
    }

    /// Declares a dynamic dimension computed from others on every run, e.g. the number of
    /// edges of a neighbour list: `s.derive_dim('e', Expression::from('n') * 16)`. Luminal's
    /// binary ops give their outputs the shape of their type, so an edge axis typed
    /// `Dyn<'e'>` needs `e` known even when the graph carries its size.
    pub fn derive_dim(&mut self, dim: char, size: impl Into<Expression>) {
        self.derived_dims.push((dim, size.into()));
    }

    /// Compiles with [`CpuCompiler`] (then, on a CUDA device, the CUDA pass); called by the
    /// first [`Session::run`] if not done.
    pub fn compile(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(backend) = &self.cuda {
            let pass = self.cuda_pass(backend.clone());
            self.compile_with((<CpuCompiler>::default(), pass));
            return;
        }
        self.compile_with((
            <CpuCompiler>::default(),
            crate::ops::edge_contract::ArrangeContractionWeights,
        ));
        // a weight read through a chain of copies (a rearrangement, then the kernel's order)
        // folds one copy at a time
        while self.fold_weight_layouts() {}
    }

    /// Stores every weight whose only reader is a [`Materialize`](super::primitives::Materialize)
    /// of a fixed-size view (a permuted or sliced copy of it the graph would make on every
    /// run, such as a radial network's last layer rearranged for a contraction kernel) in that
    /// copy's layout, and removes the copy: [`Session::set_weight`] takes the values in the
    /// declared layout and applies the view once. A weight read elsewhere too (a training
    /// graph's backward) is left as it is. Returns whether a copy was folded.
    fn fold_weight_layouts(&mut self) -> bool {
        let mut folded = false;
        let g = &mut self.graph.graph;
        for slot in self.slots.iter_mut().filter(|s| s.resident) {
            let w = slot.id;
            let readers: Vec<(NodeIndex, ShapeTracker)> = g
                .edges_directed(w, petgraph::Direction::Outgoing)
                .filter_map(|e| e.weight().as_data().map(|(_, _, st)| (e.target(), st)))
                .collect();
            let [(copy, view)] = readers[..] else {
                continue;
            };
            let is_copy = g
                .node_weight(copy)
                .is_some_and(|op| op.as_any().is::<super::primitives::Materialize>());
            let fixed = super::primitives::is_fixed_size(&view);
            if !is_copy || !fixed || self.ids.contains(&copy) {
                continue;
            }
            let consumers: Vec<(NodeIndex, Dependency)> = g
                .edges_directed(copy, petgraph::Direction::Outgoing)
                .map(|e| (e.target(), *e.weight()))
                .collect();
            for (target, dep) in consumers {
                g.add_edge(w, target, dep);
            }
            let Some(mut op) = g.remove_node(copy) else {
                continue;
            };
            if let Some(t) = self.graph.tensors.remove(&(w, 0)) {
                let out = op.process(vec![(InputTensor::Owned(t), view)]);
                if let Some(t) = out.into_iter().next() {
                    self.graph.tensors.insert((w, 0), t);
                }
                // the previous buffer went to the operator pool: freed now, so that folding
                // holds at most one weight twice
                super::pool::set_budget(0);
            }
            slot.layout.push((op, view));
            folded = true;
        }
        folded
    }

    /// Keeps luminal's primitive interpreter (no passes): the reference that tests compare
    /// compiled graphs with. Later recompilations (after adding nodes) stay stock.
    pub fn compile_stock(&mut self) {
        self.stock = true;
        self.compile_with(());
    }

    /// Compiles with any luminal compiler. If nodes are added afterwards, the next run
    /// recompiles with [`CpuCompiler`] (or stock, after [`Session::compile_stock`]).
    pub fn compile_with<C: Compiler>(&mut self, compiler: C) {
        let refs: Vec<&mut NodeIndex> = self.ids.iter_mut().collect();
        // the compiler alone: `Graph::compile` would also keep a luminal linearization (a copy
        // of every edge's 5 KiB shape) that only luminal's own order uses
        compiler.compile(&mut self.graph, refs);
        compact(&mut self.graph.graph);
        self.compiled = true;
        self.linearized = false;
        self.schedule = None;
    }

    /// Runs in luminal's own node order (`petgraph::toposort`) instead of the memory-aware
    /// order of [`Schedule`](super::schedule) (same values, usually a higher peak memory).
    pub fn set_luminal_order(&mut self, on: bool) {
        self.luminal_order = on;
    }

    /// An estimate, made before any input is set, of the most bytes of inputs and intermediates
    /// a run at the dimension sizes `dims` holds at once: the memory-aware schedule of such a run
    /// is made and walked with every tensor's size from its shape; nothing is run or allocated
    /// but the schedule. Dimensions set with [`Session::set_dim`] and derived ones
    /// ([`Session::derive_dim`]) are added as a run adds them. Compiles the session if needed.
    /// On a session that has run, inputs still held from that run are not counted.
    ///
    /// # Errors
    /// `UnsetDim` for a derived dimension whose symbols are not given.
    pub fn estimate_peak_bytes(&mut self, dims: &[(char, usize)]) -> Result<usize, Error> {
        if !self.compiled {
            self.compile();
        }
        let mut known: FxHashMap<char, usize> = self.fixed_dims.clone();
        known.extend(dims.iter().copied());
        for (c, e) in &self.derived_dims {
            let v = e.exec(&known).ok_or(Error::UnsetDim { dim: *c })?;
            known.insert(*c, v);
        }
        let saved = std::mem::replace(&mut self.graph.dyn_map, known);
        // a run schedules with its inputs set: empty stand-ins make the same schedule (the
        // walk sizes them from their shapes)
        let stand_ins: Vec<NodeIndex> = self
            .slots
            .iter()
            .filter(|s| !s.resident && !self.graph.tensors.contains_key(&(s.id, 0)))
            .map(|s| s.id)
            .collect();
        for id in &stand_ins {
            self.graph
                .set_tensor(*id, 0, Tensor::new(Vec::<f32>::new()));
        }
        let peak = Schedule::new(&self.graph).simulated_peak(&self.graph);
        for id in &stand_ins {
            self.graph.tensors.remove(&(*id, 0));
        }
        self.graph.dyn_map = saved;
        Ok(peak)
    }

    /// [`Session::estimate_peak_bytes`] with the dimensions read from the shapes the named
    /// inputs would have (as a run reads them), plus `dims`.
    ///
    /// # Errors
    /// `UnknownName` for a name that is not an input, `UnsetDim` as
    /// [`Session::estimate_peak_bytes`].
    pub fn estimate_peak_bytes_for(
        &mut self,
        shapes: &[(&str, Vec<usize>)],
        dims: &[(char, usize)],
    ) -> Result<usize, Error> {
        let mut all: Vec<(char, usize)> = dims.to_vec();
        for (name, shape) in shapes {
            let slot = &self.slots[self.slot_index(name)?];
            for (d, &size) in slot.dims.iter().zip(shape) {
                if let [c] = d.to_symbols()[..] {
                    all.push((c, size));
                }
            }
        }
        self.estimate_peak_bytes(&all)
    }

    /// Memory figures of the last run: resident weights, the peak of inputs and intermediates
    /// alive at once, the pool's free bytes at that peak (zero in luminal's order, which is not
    /// measured).
    pub fn memory_stats(&self) -> MemoryStats {
        self.memory
    }

    /// Names of the weights (resident inputs) and their declared shapes (`None` for a
    /// dynamic axis).
    pub fn weights(&self) -> Vec<(String, Vec<Option<usize>>)> {
        self.slots
            .iter()
            .filter(|s| s.resident)
            .map(|s| (s.name.clone(), s.dims.iter().map(fixed).collect()))
            .collect()
    }

    /// The row-major values a weight was last set to ([`Session::set_weight`]).
    ///
    /// # Errors
    /// `UnknownName` if there is no weight `name`, `MissingInput` if it has no value yet.
    pub fn weight_values(&self, name: &str) -> Result<Vec<f32>, Error> {
        let i = self.slot_index(name)?;
        let missing = || Error::MissingInput {
            name: name.to_string(),
        };
        let slot = &self.slots[i];
        if !slot.resident {
            return Err(Error::UnknownName {
                role: "weight",
                name: name.to_string(),
            });
        }
        let t = self.graph.get_tensor_ref(slot.id, 0).ok_or_else(missing)?;
        t.data
            .as_any()
            .downcast_ref::<Vec<f32>>()
            .cloned()
            .ok_or_else(missing)
    }

    /// Names of the per-run inputs, in declaration order.
    pub fn input_names(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| !s.resident)
            .map(|s| s.name.clone())
            .collect()
    }

    /// The graph tensor of the input or weight `name` (its declared shape), e.g. to ask for
    /// gradients with respect to it ([`autodiff`](crate::autodiff)).
    ///
    /// # Errors
    /// `UnknownName` if the graph has no input or weight `name`.
    pub fn tensor(&mut self, name: &str) -> Result<GraphTensor<()>, Error> {
        let i = self.slot_index(name)?;
        let (id, dims) = (self.slots[i].id, self.slots[i].dims.clone());
        let graph: *mut Graph = &mut *self.graph;
        Ok(GraphTensor::from_id(id, ShapeTracker::new(&dims), graph))
    }

    fn slot_index(&self, name: &str) -> Result<usize, Error> {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::UnknownName {
                role: "input or weight",
                name: name.to_string(),
            })
    }

    fn check_shape(slot: &Slot, data: &[f32], shape: &[usize]) -> Result<(), Error> {
        if shape.len() != slot.dims.len() {
            return Err(Error::RankMismatch {
                name: slot.name.clone(),
                expected: slot.dims.len(),
                found: shape.len(),
            });
        }
        for (axis, (d, &s)) in slot.dims.iter().zip(shape).enumerate() {
            if let Some(f) = fixed(d) {
                if f != s {
                    return Err(Error::AxisMismatch {
                        name: slot.name.clone(),
                        axis,
                        expected: f,
                        found: s,
                    });
                }
            }
            if s == 0 {
                return Err(Error::EmptyInput {
                    name: slot.name.clone(),
                    axis,
                });
            }
        }
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::DataLength {
                name: slot.name.clone(),
                expected: n,
                found: data.len(),
            });
        }
        Ok(())
    }

    /// Sets the value of input `name` for the next run (row-major `data` of `shape`).
    ///
    /// # Errors
    /// `UnknownName`, `RankMismatch`, `AxisMismatch` (fixed axes), `EmptyInput`, `DataLength`,
    /// `NonFiniteInput` (coordinates and indices), `NotAMask`, `BadIndex` (not an integer).
    pub fn set(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<(), Error> {
        let i = self.slot_index(name)?;
        let slot = &self.slots[i];
        Self::check_shape(slot, &data, shape)?;
        match slot.kind {
            InputKind::Values => {}
            InputKind::Coordinates => {
                if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite())
                {
                    return Err(Error::NonFiniteInput {
                        name: name.to_string(),
                        index,
                        value,
                    });
                }
            }
            InputKind::Mask => {
                if let Some((index, &value)) = data
                    .iter()
                    .enumerate()
                    .find(|(_, v)| **v != 0.0 && **v != 1.0)
                {
                    return Err(Error::NotAMask {
                        name: name.to_string(),
                        index,
                        value,
                    });
                }
            }
            InputKind::Indices { allow_missing, .. } => {
                let min = if allow_missing { -1.0 } else { 0.0 };
                if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| {
                    !v.is_finite() || v.fract() != 0.0 || **v < min || **v >= 16_777_216.0
                }) {
                    return Err(Error::BadIndex {
                        name: name.to_string(),
                        index,
                        value,
                        min: min as i64,
                        len: 16_777_216,
                    });
                }
            }
        }
        self.slots[i].pending = Some((data, shape.to_vec()));
        Ok(())
    }

    /// Sets a resident weight; it stays in the graph across runs until set again.
    ///
    /// # Errors
    /// As [`Session::set`]; weights must not have dynamic axes left unknown.
    pub fn set_weight(&mut self, name: &str, data: Vec<f32>, shape: &[usize]) -> Result<(), Error> {
        let i = self.slot_index(name)?;
        let slot = &mut self.slots[i];
        Self::check_shape(slot, &data, shape)?;
        let id = slot.id;
        let mut t = Tensor::new(data);
        for (op, view) in &mut slot.layout {
            // stored in the layout of the copies the graph read it through
            if let Some(out) = op
                .process(vec![(InputTensor::Owned(t), *view)])
                .into_iter()
                .next()
            {
                t = out;
            } else {
                return Err(Error::InvalidOp {
                    op: "set_weight",
                    problem: "a folded weight layout gave no values",
                });
            }
        }
        if !self.slots[i].layout.is_empty() {
            // the buffers of the layouts' inputs went to the operator pool: not for keeping
            super::pool::set_budget(0);
        }
        self.graph.set_tensor(id, 0, t);
        self.slots[i].loaded = true;
        #[cfg(feature = "cuda")]
        self.weights_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Checks every pending input together and runs the graph.
    ///
    /// # Errors
    /// `MissingInput` (input or weight without a value), `AxisMismatch` (two inputs disagree on
    /// a dynamic dimension), `BadIndex` (index out of its bound), `UnsetDim`.
    pub fn run(&mut self) -> Result<(), Error> {
        if !self.compiled {
            if self.stock {
                self.compile_with(());
            } else {
                self.compile();
            }
        }
        // Dynamic dimensions from the inputs.
        let mut dims: FxHashMap<char, (usize, String)> = FxHashMap::default();
        for (c, v) in &self.fixed_dims {
            if *v == 0 {
                return Err(Error::EmptyDim { dim: *c });
            }
            dims.insert(*c, (*v, "set_dim".to_string()));
        }
        for slot in &self.slots {
            if slot.resident {
                if !slot.loaded {
                    return Err(Error::MissingInput {
                        name: slot.name.clone(),
                    });
                }
                continue;
            }
            let Some((_, shape)) = &slot.pending else {
                return Err(Error::MissingInput {
                    name: slot.name.clone(),
                });
            };
            for (axis, (d, &s)) in slot.dims.iter().zip(shape).enumerate() {
                if fixed(d).is_some() {
                    continue;
                }
                if let [c] = d.to_symbols()[..] {
                    match dims.get(&c) {
                        Some((v, _)) if *v != s => {
                            return Err(Error::AxisMismatch {
                                name: slot.name.clone(),
                                axis,
                                expected: *v,
                                found: s,
                            })
                        }
                        Some(_) => {}
                        None => {
                            dims.insert(c, (s, slot.name.clone()));
                        }
                    }
                }
            }
        }
        // Derived dimensions, in declaration order.
        for (c, e) in &self.derived_dims {
            let known: FxHashMap<char, usize> = dims.iter().map(|(k, v)| (*k, v.0)).collect();
            let Some(v) = e.exec(&known) else {
                let missing = e.to_symbols().into_iter().find(|s| !known.contains_key(s));
                return Err(Error::UnsetDim {
                    dim: missing.unwrap_or(*c),
                });
            };
            if v == 0 {
                return Err(Error::EmptyDim { dim: *c });
            }
            dims.insert(*c, (v, "derive_dim".to_string()));
        }
        // Index bounds.
        for slot in &self.slots {
            let (
                InputKind::Indices {
                    bound,
                    allow_missing,
                },
                Some((data, _)),
            ) = (slot.kind, &slot.pending)
            else {
                continue;
            };
            let len = match bound {
                IndexBound::Fixed(n) => n,
                IndexBound::Dim(c) => dims
                    .get(&c)
                    .map(|d| d.0)
                    .ok_or(Error::UnsetDim { dim: c })?,
            };
            let min = if allow_missing { -1.0 } else { 0.0 };
            if let Some((index, &value)) = data
                .iter()
                .enumerate()
                .find(|(_, v)| **v < min || **v >= len as f32)
            {
                return Err(Error::BadIndex {
                    name: slot.name.clone(),
                    index,
                    value,
                    min: min as i64,
                    len,
                });
            }
        }
        // Every symbol the graph's edges use must be known.
        for e in self.graph.graph.edge_weights() {
            if let Some((_, _, st)) = e.as_data() {
                for d in st
                    .dims
                    .iter()
                    .chain(st.padding.iter().flat_map(|p| [&p.0, &p.1]))
                    .chain(st.slices.iter().flat_map(|p| [&p.0, &p.1]))
                {
                    for c in d.to_symbols() {
                        if !dims.contains_key(&c) {
                            return Err(Error::UnsetDim { dim: c });
                        }
                    }
                }
            }
        }
        // Commit: dims, fresh outputs, inputs; then run.
        for (c, (v, _)) in &dims {
            self.graph.set_dyn_dim(*c, *v);
        }
        for o in &self.outputs {
            let id = self.ids[o.id];
            if !self.slots.iter().any(|s| s.id == id && s.resident) {
                self.graph.tensors.remove(&(id, 0));
            }
        }
        for slot in &mut self.slots {
            if let Some((data, _)) = slot.pending.take() {
                self.graph.set_tensor(slot.id, 0, Tensor::new(data));
            }
        }
        if self.luminal_order {
            if !self.linearized {
                // no pass: refreshes luminal's linearization for `execute`
                self.graph.compile((), Vec::<&mut NodeIndex>::new());
                self.linearized = true;
            }
            self.graph.execute();
            self.memory = MemoryStats::default();
        } else {
            if !self.schedule.as_ref().is_some_and(|s| s.fits(&self.graph)) {
                self.schedule = Some(Schedule::new(&self.graph));
            }
            if let Some(order) = &self.schedule {
                self.memory = schedule::execute(&mut self.graph, order, &mut self.high_water)?;
            }
        }
        // Intermediates are dead now: give the pooled buffers back to the allocator but the
        // pool's slack, which the next run reuses instead of faulting in fresh pages (the
        // VN-Transformer at 512 nodes: 8000 -> 4200 page faults and 28 -> 14 ms of system time
        // a forward on a VM that reports freed pages to its host; peaks within the slack).
        super::pool::set_budget(0);
        #[cfg(feature = "cuda")]
        if let Some(backend) = &self.cuda {
            backend.take_fault()?;
        }
        self.ran = true;
        Ok(())
    }

    /// The value of output `name` from the last run, row-major.
    ///
    /// # Errors
    /// `UnknownName`, `NoOutput` (not run yet).
    pub fn get(&self, name: &str) -> Result<Output, Error> {
        let o = self
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| Error::UnknownName {
                role: "output",
                name: name.to_string(),
            })?;
        let id = self.ids[o.id];
        let t = self
            .graph
            .get_tensor_ref(id, 0)
            .filter(|_| self.ran)
            .ok_or_else(|| Error::NoOutput {
                name: name.to_string(),
            })?;
        let buf = t
            .data
            .as_any()
            .downcast_ref::<Vec<f32>>()
            .ok_or_else(|| Error::NoOutput {
                name: name.to_string(),
            })?;
        let view = View::new(&o.shape, &self.graph.dyn_map);
        Ok(Output {
            data: view.materialize(buf).into_owned(),
            shape: view.shape(),
        })
    }

    /// Like [`Session::get`], but moves the buffer out of the graph (no copy when the output
    /// is laid out row-major already); a second `take` before the next run is `NoOutput`.
    ///
    /// # Errors
    /// `UnknownName`, `NoOutput`.
    pub fn take(&mut self, name: &str) -> Result<Output, Error> {
        let o = self
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| Error::UnknownName {
                role: "output",
                name: name.to_string(),
            })?;
        let id = self.ids[o.id];
        let view = View::new(&o.shape, &self.graph.dyn_map);
        if self.slots.iter().any(|s| s.id == id) {
            return self.get(name);
        }
        let mut t = self
            .graph
            .tensors
            .remove(&(id, 0))
            .filter(|_| self.ran)
            .ok_or_else(|| Error::NoOutput {
                name: name.to_string(),
            })?;
        let Some(buf) = t
            .data
            .as_any_mut()
            .downcast_mut::<Vec<f32>>()
            .map(std::mem::take)
        else {
            return Err(Error::NoOutput {
                name: name.to_string(),
            });
        };
        let data = if view.plain && buf.len() == view.n {
            buf
        } else {
            view.materialize(&buf).into_owned()
        };
        Ok(Output {
            data,
            shape: view.shape(),
        })
    }

    /// Number of nodes in the (compiled) graph.
    pub fn node_count(&self) -> usize {
        self.graph.graph.node_count()
    }
}

/// The placeholder of a vacant node slot while [`compact`] rebuilds a graph (never run).
#[derive(Debug, PartialEq)]
struct Vacant;

impl Operator for Vacant {
    fn process(&mut self, _: Vec<(luminal::op::InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        Vec::new()
    }
}

/// Rebuilds `g` without the vacant edge slots that compiler passes leave behind (petgraph's
/// `StableGraph` keeps a slot, with its 5 KiB shape, for every removed edge: most of a compiled
/// model's edge storage), keeping every node index.
fn compact(g: &mut MainGraph) {
    let bound = g.node_indices().map(|n| n.index() + 1).max().unwrap_or(0);
    let mut out = MainGraph::with_capacity(bound, g.edge_count());
    for i in 0..bound {
        let w: Box<dyn Operator> = match g.node_weight_mut(NodeIndex::new(i)) {
            Some(w) => std::mem::replace(w, Box::new(Vacant)),
            None => Box::new(Vacant),
        };
        out.add_node(w);
    }
    let mut edges: Vec<_> = g.edge_indices().collect();
    edges.sort_unstable();
    for e in edges {
        if let (Some((a, b)), Some(w)) = (g.edge_endpoints(e), g.edge_weight(e)) {
            out.add_edge(a, b, *w);
        }
    }
    for i in 0..bound {
        if !g.contains_node(NodeIndex::new(i)) {
            out.remove_node(NodeIndex::new(i));
        }
    }
    *g = out;
}

impl Session {
    /// The debug names of the graph's operators (to check what a compiler produced).
    pub fn op_names(&self) -> Vec<String> {
        self.graph
            .graph
            .node_weights()
            .map(|o| format!("{o:?}"))
            .collect()
    }
}
