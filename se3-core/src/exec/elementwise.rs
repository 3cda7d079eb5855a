//! Fused elementwise kernels: chains of luminal's unary and binary primitives (`Log2`, `Exp2`,
//! `Sin`, `Sqrt`, `Recip`, `Add`, `Mul`, `Mod`, `LessThan`) executed as one native loop.
//!
//! A fused op holds a small register program. It runs over blocks of `BLOCK` output
//! elements: each input is read into a block through its `View` (a plain copy when
//! contiguous), then every instruction is a tight loop over the block, so the chain costs one
//! pass over memory. Large outputs split blocks over threads (rayon).
//!
//! Semantics follow the luminal 0.2 primitives: a binary op writes its output in logical
//! (row-major) order of its inputs' shape; a unary op maps its input *buffer* (its output keeps
//! the input's view). [`ElementwiseFusion`] therefore only fuses across edges whose view is
//! plain (contiguous, unsliced, unpadded), where both readings agree.

use std::fmt;

use luminal::op::{InputTensor, Operator};
use luminal::prelude::{
    petgraph::{visit::EdgeRef, Direction},
    *,
};
use rayon::prelude::*;

use super::view::{buffer, View, BLOCK, PAR_MIN};

/// A unary elementwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryFn {
    Log2,
    Exp2,
    Sin,
    Sqrt,
    Recip,
}

/// A binary elementwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryFn {
    Add,
    Mul,
    /// `a % b` with the sign of `a` (Rust `%` on f32).
    Mod,
    /// 1.0 where `a < b`, else 0.0.
    LessThan,
}

/// One instruction of a fused program; operands are earlier registers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Instr {
    /// Read input `i` (through its view).
    Input(usize),
    /// A constant.
    Const(f32),
    Unary(UnaryFn, usize),
    Binary(BinaryFn, usize, usize),
}

/// A fused elementwise operator (see the module documentation).
#[derive(Clone, PartialEq)]
pub struct FusedElementwise {
    /// Instructions; register `r` holds the result of instruction `r`.
    pub program: Vec<Instr>,
    /// The register that is the output.
    pub output: usize,
    /// Map the input buffer as is (a lone unary op over a non-plain view, luminal semantics).
    pub raw: bool,
}

impl fmt::Debug for FusedElementwise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FusedElementwise({} instrs)", self.program.len())
    }
}

#[inline]
fn apply_unary(op: UnaryFn, x: &[f32], out: &mut [f32]) {
    match op {
        UnaryFn::Log2 => out.iter_mut().zip(x).for_each(|(o, a)| *o = a.log2()),
        UnaryFn::Exp2 => out.iter_mut().zip(x).for_each(|(o, a)| *o = a.exp2()),
        UnaryFn::Sin => out.iter_mut().zip(x).for_each(|(o, a)| *o = a.sin()),
        UnaryFn::Sqrt => out.iter_mut().zip(x).for_each(|(o, a)| *o = a.sqrt()),
        UnaryFn::Recip => out.iter_mut().zip(x).for_each(|(o, a)| *o = 1.0 / a),
    }
}

#[inline]
fn apply_binary(op: BinaryFn, a: Operand, b: Operand, out: &mut [f32]) {
    macro_rules! each {
        ($f:expr) => {
            match (a, b) {
                (Operand::Slice(a), Operand::Slice(b)) => out
                    .iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&x, &y))| *o = $f(x, y)),
                (Operand::Slice(a), Operand::Scalar(y)) => {
                    out.iter_mut().zip(a).for_each(|(o, &x)| *o = $f(x, y))
                }
                (Operand::Scalar(x), Operand::Slice(b)) => {
                    out.iter_mut().zip(b).for_each(|(o, &y)| *o = $f(x, y))
                }
                (Operand::Scalar(x), Operand::Scalar(y)) => out.fill($f(x, y)),
            }
        };
    }
    match op {
        BinaryFn::Add => each!(|x: f32, y: f32| x + y),
        BinaryFn::Mul => each!(|x: f32, y: f32| x * y),
        BinaryFn::Mod => each!(|x: f32, y: f32| x % y),
        BinaryFn::LessThan => each!(|x: f32, y: f32| if x < y { 1.0 } else { 0.0 }),
    }
}

impl FusedElementwise {
    /// Runs the program for output elements `start .. start + out.len()`.
    ///
    /// Each instruction's value lives where it is cheapest: a slice of an input buffer (plain
    /// inputs are read in place, not copied), a scalar (constants, broadcast scalars and
    /// anything computed from scalars only), or a register; the output instruction, when it
    /// is the last one, writes straight into `out`.
    fn run_block<'a>(
        &self,
        inputs: &[(&'a [f32], View)],
        start: usize,
        out: &mut [f32],
        regs: &mut Vec<Vec<f32>>,
        locs: &mut Vec<Loc<'a>>,
    ) {
        let len = out.len();
        let last = self.program.len().saturating_sub(1);
        if regs.len() < self.program.len() {
            regs.resize_with(self.program.len(), Vec::new);
        }
        locs.clear();
        for (r, ins) in self.program.iter().enumerate() {
            let (before, rest) = regs.split_at_mut(r);
            let direct = r == self.output && r == last;
            let loc = match *ins {
                Instr::Input(i) => {
                    let (buf, view) = &inputs[i];
                    if self.raw || (view.plain && start + len <= buf.len()) {
                        Loc::Slice(&buf[start..start + len])
                    } else if view.is_broadcast_scalar() {
                        let base: i64 = view
                            .axes
                            .iter()
                            .filter(|a| !a.fake)
                            .map(|a| a.offset * a.stride as i64)
                            .sum();
                        Loc::Scalar(
                            usize::try_from(base)
                                .ok()
                                .and_then(|b| buf.get(b))
                                .copied()
                                .unwrap_or(0.0),
                        )
                    } else {
                        let dst = register(&mut rest[0], len, direct, out);
                        view.gather(buf, start, dst);
                        Loc::Reg
                    }
                }
                Instr::Const(c) => Loc::Scalar(c),
                Instr::Unary(op, a) => match operand(locs[a], before, a, len) {
                    Operand::Scalar(x) => Loc::Scalar(unary_scalar(op, x)),
                    Operand::Slice(x) => {
                        apply_unary(op, x, register(&mut rest[0], len, direct, out));
                        Loc::Reg
                    }
                },
                Instr::Binary(op, a, b) => {
                    let (x, y) = (
                        operand(locs[a], before, a, len),
                        operand(locs[b], before, b, len),
                    );
                    if let (Operand::Scalar(x), Operand::Scalar(y)) = (x, y) {
                        Loc::Scalar(binary_scalar(op, x, y))
                    } else {
                        apply_binary(op, x, y, register(&mut rest[0], len, direct, out));
                        Loc::Reg
                    }
                }
            };
            locs.push(loc);
        }
        let o = self.output;
        match locs[o] {
            Loc::Reg if o == last => {}
            Loc::Reg => out.copy_from_slice(&regs[o][..len]),
            Loc::Slice(x) => out.copy_from_slice(x),
            Loc::Scalar(c) => out.fill(c),
        }
    }
}

/// Where an instruction's value for the current block lives.
#[derive(Debug, Clone, Copy)]
enum Loc<'a> {
    /// Its register (or `out`, for the output instruction written in place).
    Reg,
    /// A slice of an input buffer.
    Slice(&'a [f32]),
    /// One value for the whole block.
    Scalar(f32),
}

/// An instruction's value as read by a later one.
#[derive(Debug, Clone, Copy)]
enum Operand<'s> {
    Slice(&'s [f32]),
    Scalar(f32),
}

fn operand<'s>(loc: Loc<'s>, regs: &'s [Vec<f32>], r: usize, len: usize) -> Operand<'s> {
    match loc {
        Loc::Reg => Operand::Slice(&regs[r][..len]),
        Loc::Slice(x) => Operand::Slice(x),
        Loc::Scalar(c) => Operand::Scalar(c),
    }
}

/// The destination of an instruction: `out` itself for the output instruction, else its
/// register grown to `len`.
fn register<'r>(
    reg: &'r mut Vec<f32>,
    len: usize,
    direct: bool,
    out: &'r mut [f32],
) -> &'r mut [f32] {
    if direct {
        out
    } else {
        if reg.len() < len {
            reg.resize(len, 0.0);
        }
        &mut reg[..len]
    }
}

fn unary_scalar(op: UnaryFn, a: f32) -> f32 {
    match op {
        UnaryFn::Log2 => a.log2(),
        UnaryFn::Exp2 => a.exp2(),
        UnaryFn::Sin => a.sin(),
        UnaryFn::Sqrt => a.sqrt(),
        UnaryFn::Recip => 1.0 / a,
    }
}

#[inline(always)]
fn binary_scalar(op: BinaryFn, a: f32, b: f32) -> f32 {
    match op {
        BinaryFn::Add => a + b,
        BinaryFn::Mul => a * b,
        BinaryFn::Mod => a % b,
        BinaryFn::LessThan => {
            if a < b {
                1.0
            } else {
                0.0
            }
        }
    }
}

impl Operator for FusedElementwise {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let inputs: Vec<(&[f32], View)> = inp
            .iter()
            .map(|(t, st)| (buffer(t), View::new(st, &empty)))
            .collect();
        let n = if self.raw {
            inputs.first().map(|(b, _)| b.len()).unwrap_or(0)
        } else {
            inputs.first().map(|(_, v)| v.n).unwrap_or(1)
        };
        let mut out = super::pool::take(n);
        if n >= PAR_MIN {
            out.par_chunks_mut(BLOCK).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(regs, locs), (c, chunk)| self.run_block(&inputs, c * BLOCK, chunk, regs, locs),
            );
        } else {
            let (mut regs, mut locs) = (Vec::new(), Vec::new());
            for (c, chunk) in out.chunks_mut(BLOCK).enumerate() {
                self.run_block(&inputs, c * BLOCK, chunk, &mut regs, &mut locs);
            }
        }
        super::pool::finish(inp, out)
    }
}

/// The unary or binary function of a luminal primitive, if it is one.
fn primitive(op: &dyn Operator) -> Option<Instr> {
    let a = op.as_any();
    use luminal::op as l;
    if a.is::<l::Log2>() {
        Some(Instr::Unary(UnaryFn::Log2, 0))
    } else if a.is::<l::Exp2>() {
        Some(Instr::Unary(UnaryFn::Exp2, 0))
    } else if a.is::<l::Sin>() {
        Some(Instr::Unary(UnaryFn::Sin, 0))
    } else if a.is::<l::Sqrt>() {
        Some(Instr::Unary(UnaryFn::Sqrt, 0))
    } else if a.is::<l::Recip>() {
        Some(Instr::Unary(UnaryFn::Recip, 0))
    } else if a.is::<l::Add>() {
        Some(Instr::Binary(BinaryFn::Add, 0, 1))
    } else if a.is::<l::Mul>() {
        Some(Instr::Binary(BinaryFn::Mul, 0, 1))
    } else if a.is::<l::Mod>() {
        Some(Instr::Binary(BinaryFn::Mod, 0, 1))
    } else if a.is::<l::LessThan>() {
        Some(Instr::Binary(BinaryFn::LessThan, 0, 1))
    } else {
        None
    }
}

/// A shape tracker that reads its buffer as is, whatever the dynamic dimensions are.
pub(crate) fn is_plain(st: &ShapeTracker) -> bool {
    st.is_contiguous() && !st.is_sliced() && !st.is_padded()
}

/// Incoming data edges of `node`, sorted by input order: (source, output index, view).
pub(crate) fn sources(graph: &Graph, node: NodeIndex) -> Vec<(NodeIndex, u8, ShapeTracker)> {
    graph.get_sources(node)
}

/// Replaces `old` by a new node running `op` with the given inputs; outgoing edges and
/// external references move over. Returns the new node.
pub(crate) fn replace_node<T: ToIdsMut, O: Operator + 'static>(
    graph: &mut Graph,
    remap: &mut T,
    old: NodeIndex,
    op: O,
    inputs: &[(NodeIndex, u8, ShapeTracker)],
) -> NodeIndex {
    let mut new = graph.add_op(op);
    for (src, out, st) in inputs {
        new = new.input(*src, *out, *st);
    }
    let new = new.finish();
    let outgoing: Vec<_> = graph
        .graph
        .edges_directed(old, Direction::Outgoing)
        .map(|e| (e.target(), *e.weight()))
        .collect();
    for (t, w) in outgoing {
        graph.graph.add_edge(new, t, w);
    }
    move_references(
        remap,
        &mut graph.no_delete,
        &mut graph.to_retrieve,
        old,
        new,
    );
    graph.graph.remove_node(old);
    new
}

/// Whether every input view of an elementwise node has the same rank. A node whose inputs
/// disagree (a malformed graph: one operand broadcast along an extra axis) runs on its own,
/// where each input is read through its view up to the output's length; fused, its
/// buffer-length assumptions would not hold. (Seen in the backward graph of `layer_norm_gelu`
/// when only its input's gradient is taken; the source of the extra axis is not found yet.)
fn same_rank(srcs: &[(NodeIndex, u8, ShapeTracker)]) -> bool {
    srcs.windows(2).all(|w| w[0].2.len() == w[1].2.len())
}

/// Compiler pass: every elementwise primitive becomes a [`FusedElementwise`]; then producers
/// are folded into their consumer while the connecting edges are plain, the producer has no
/// other consumer and is not kept/retrieved. Float constants read through all-fake views
/// become immediates.
#[derive(Debug, Default)]
pub struct ElementwiseFusion;

impl Compiler for ElementwiseFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        // 1. Lower primitives.
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for node in nodes {
            let Some(instr) = graph
                .graph
                .node_weight(node)
                .and_then(|o| primitive(o.as_ref()))
            else {
                continue;
            };
            let srcs = sources(graph, node);
            let (program, raw) = match instr {
                Instr::Unary(f, _) => {
                    if srcs.len() != 1 {
                        continue;
                    }
                    (
                        vec![Instr::Input(0), Instr::Unary(f, 0)],
                        !is_plain(&srcs[0].2),
                    )
                }
                Instr::Binary(f, _, _) => {
                    if srcs.len() != 2 {
                        continue;
                    }
                    (
                        vec![Instr::Input(0), Instr::Input(1), Instr::Binary(f, 0, 1)],
                        false,
                    )
                }
                _ => continue,
            };
            let output = program.len() - 1;
            replace_node(
                graph,
                &mut remap,
                node,
                FusedElementwise {
                    program,
                    output,
                    raw,
                },
                &srcs,
            );
        }
        // 2. Fold float constants.
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for node in nodes {
            let Some(op) = graph
                .graph
                .node_weight(node)
                .and_then(|o| o.as_any().downcast_ref::<FusedElementwise>())
                .cloned()
            else {
                continue;
            };
            if op.raw {
                continue;
            }
            let srcs = sources(graph, node);
            let mut keep = Vec::new();
            let mut map = vec![usize::MAX; srcs.len()];
            let mut consts = vec![None; srcs.len()];
            for (i, (src, _, st)) in srcs.iter().enumerate() {
                let c = graph
                    .graph
                    .node_weight(*src)
                    .and_then(|o| o.as_any().downcast_ref::<luminal::op::Constant>())
                    .and_then(|c| match c.0 {
                        luminal::op::ConstantValue::Float(f) => Some(f),
                        _ => None,
                    });
                let all_fake = st.fake.iter().all(|f| *f) && !st.is_padded() && !st.is_sliced();
                match c {
                    Some(f) if all_fake && !srcs.is_empty() => consts[i] = Some(f),
                    _ => {
                        map[i] = keep.len();
                        keep.push(srcs[i]);
                    }
                }
            }
            if keep.len() == srcs.len() || keep.is_empty() {
                continue;
            }
            let program = op
                .program
                .iter()
                .map(|ins| match *ins {
                    Instr::Input(i) => consts[i].map(Instr::Const).unwrap_or(Instr::Input(map[i])),
                    other => other,
                })
                .collect();
            let new = FusedElementwise {
                program,
                output: op.output,
                raw: false,
            };
            replace_node(graph, &mut remap, node, new, &keep);
        }
        // 3. Fuse producer into consumer until nothing changes.
        loop {
            let mut changed = false;
            let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
            for consumer in nodes {
                let Some(cop) = graph
                    .graph
                    .node_weight(consumer)
                    .and_then(|o| o.as_any().downcast_ref::<FusedElementwise>())
                    .cloned()
                else {
                    continue;
                };
                if cop.raw {
                    continue;
                }
                let srcs = sources(graph, consumer);
                if !same_rank(&srcs) {
                    continue;
                }
                let candidate = srcs.iter().map(|s| s.0).find(|&p| {
                    if p == consumer || graph.no_delete.contains(&p) {
                        return false;
                    }
                    let Some(pop) = graph
                        .graph
                        .node_weight(p)
                        .and_then(|o| o.as_any().downcast_ref::<FusedElementwise>())
                    else {
                        return false;
                    };
                    if pop.raw || !same_rank(&sources(graph, p)) {
                        return false;
                    }
                    let mut outs = graph.graph.edges_directed(p, Direction::Outgoing);
                    outs.all(|e| {
                        e.target() == consumer
                            && e.weight()
                                .as_data()
                                .map(|(_, o, st)| o == 0 && is_plain(&st))
                                .unwrap_or(false)
                    })
                });
                let Some(producer) = candidate else {
                    continue;
                };
                let Some(pop) = graph
                    .graph
                    .node_weight(producer)
                    .and_then(|o| o.as_any().downcast_ref::<FusedElementwise>())
                    .cloned()
                else {
                    continue;
                };
                let psrcs = sources(graph, producer);
                // New inputs: consumer's inputs that are not the producer, then the producer's.
                let mut inputs = Vec::new();
                let mut cmap = vec![usize::MAX; srcs.len()];
                for (i, s) in srcs.iter().enumerate() {
                    if s.0 != producer {
                        cmap[i] = inputs.len();
                        inputs.push(*s);
                    }
                }
                let poff = inputs.len();
                inputs.extend(psrcs.iter().copied());
                let mut program: Vec<Instr> = pop
                    .program
                    .iter()
                    .map(|ins| match *ins {
                        Instr::Input(i) => Instr::Input(poff + i),
                        other => other,
                    })
                    .collect();
                let p_out = pop.output;
                let mut reg = vec![0usize; cop.program.len()];
                for (r, ins) in cop.program.iter().enumerate() {
                    reg[r] = match *ins {
                        Instr::Input(i) if srcs[i].0 == producer => p_out,
                        Instr::Input(i) => {
                            program.push(Instr::Input(cmap[i]));
                            program.len() - 1
                        }
                        Instr::Const(c) => {
                            program.push(Instr::Const(c));
                            program.len() - 1
                        }
                        Instr::Unary(f, a) => {
                            program.push(Instr::Unary(f, reg[a]));
                            program.len() - 1
                        }
                        Instr::Binary(f, a, b) => {
                            program.push(Instr::Binary(f, reg[a], reg[b]));
                            program.len() - 1
                        }
                    };
                }
                let output = reg[cop.output];
                replace_node(
                    graph,
                    &mut remap,
                    consumer,
                    FusedElementwise {
                        program,
                        output,
                        raw: false,
                    },
                    &inputs,
                );
                graph.graph.remove_node(producer);
                changed = true;
            }
            if !changed {
                break;
            }
        }
    }
}
