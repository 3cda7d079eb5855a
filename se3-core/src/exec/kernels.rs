//! The CUDA kernel sources of every op, one `.cu` file beside the op's other kernels, listed
//! once for the CUDA backend (NVRTC at run time), the compile test (NVRTC + ptxas for sm_80
//! and sm_90) and the CPU-shim execution tests. The sources are plain text, so this list
//! exists in every build; only running them needs the `cuda` feature.

/// One `.cu` file: where it lives, its text and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// Path below `se3-core/src/`.
    pub file: &'static str,
    /// The CUDA C++ source (no includes: NVRTC compiles it alone, after [`PRELUDE`]).
    pub source: &'static str,
    /// Its kernels, with whether each is hot (runs per edge or per element of a model's
    /// forward pass), where a register spill fails the compile test.
    pub kernels: &'static [(&'static str, Hot)],
}

/// The device functions every source may use (`exec/cuda/prelude.cuh`: warp and block
/// reductions, sigmoid, SiLU', GELU), compiled in front of each source.
pub const PRELUDE: &str = include_str!("cuda/prelude.cuh");

impl KernelSource {
    /// The text NVRTC compiles: [`PRELUDE`], then the source.
    pub fn program(&self) -> String {
        format!("{PRELUDE}\n// ---- {}\n{}", self.file, self.source)
    }
}

/// Whether a kernel runs in the inner loop of a model (a register spill there is a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hot {
    /// Runs per element or per edge of every forward pass.
    Yes,
    /// Runs once per graph or on small data (bucketing setup, scans).
    No,
}

/// Every kernel source of se3 (ops and exec primitives).
pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "ops/gather/gather.cu",
        source: include_str!("../ops/gather/gather.cu"),
        kernels: &[("gather_rows", Hot::Yes)],
    },
    KernelSource {
        file: "ops/scatter_add/scatter_add.cu",
        source: include_str!("../ops/scatter_add/scatter_add.cu"),
        kernels: &[
            ("scatter_add_atomic", Hot::Yes),
            ("bucket_count", Hot::No),
            ("bucket_scan", Hot::No),
            ("bucket_fill", Hot::No),
            ("bucket_sort", Hot::No),
            ("scatter_add_sorted", Hot::Yes),
        ],
    },
    KernelSource {
        file: "ops/segment_softmax/segment_softmax.cu",
        source: include_str!("../ops/segment_softmax/segment_softmax.cu"),
        kernels: &[("segment_softmax_sorted", Hot::Yes)],
    },
    KernelSource {
        file: "ops/relative_positions/relative_positions.cu",
        source: include_str!("../ops/relative_positions/relative_positions.cu"),
        kernels: &[("relative_positions", Hot::Yes)],
    },
    KernelSource {
        file: "ops/layer_norm_gelu/layer_norm_gelu.cu",
        source: include_str!("../ops/layer_norm_gelu/layer_norm_gelu.cu"),
        kernels: &[("layer_norm_gelu_rows", Hot::Yes)],
    },
    KernelSource {
        file: "ops/layer_norm_gelu/layer_norm_gelu_grad.cu",
        source: include_str!("../ops/layer_norm_gelu/layer_norm_gelu_grad.cu"),
        kernels: &[("layer_norm_gelu_grad_rows", Hot::Yes)],
    },
    KernelSource {
        file: "ops/silu_layer_norm/silu_layer_norm.cu",
        source: include_str!("../ops/silu_layer_norm/silu_layer_norm.cu"),
        kernels: &[("silu_layer_norm_rows", Hot::Yes)],
    },
    KernelSource {
        file: "ops/top_k/top_k.cu",
        source: include_str!("../ops/top_k/top_k.cu"),
        kernels: &[("top_k_rows", Hot::No)],
    },
    KernelSource {
        file: "ops/edge_conv/edge_conv.cu",
        source: include_str!("../ops/edge_conv/edge_conv.cu"),
        kernels: &[("edge_conv_sorted", Hot::Yes)],
    },
    KernelSource {
        file: "ops/neighbors/knn.cu",
        source: include_str!("../ops/neighbors/knn.cu"),
        kernels: &[("knn_rows", Hot::No)],
    },
    KernelSource {
        file: "ops/radial_hidden/radial_hidden.cu",
        source: include_str!("../ops/radial_hidden/radial_hidden.cu"),
        kernels: &[("radial_hidden_rows", Hot::Yes)],
    },
    KernelSource {
        file: "ops/edge_contract/edge_contract.cu",
        source: include_str!("../ops/edge_contract/edge_contract.cu"),
        kernels: &[
            ("edge_contract_sum_nodes", Hot::Yes),
            ("edge_contract_logits_nodes", Hot::Yes),
            ("edge_contract_edge_grad_nodes", Hot::Yes),
            ("edge_contract_weight_grad_nodes", Hot::Yes),
        ],
    },
    KernelSource {
        file: "ops/edge_conv/radial_edge_conv.cu",
        source: include_str!("../ops/edge_conv/radial_edge_conv.cu"),
        kernels: &[("radial_edge_conv_sorted", Hot::Yes)],
    },
    KernelSource {
        file: "ops/adjacency/adjacency.cu",
        source: include_str!("../ops/adjacency/adjacency.cu"),
        kernels: &[("adjacency_init", Hot::No), ("adjacency_step", Hot::No)],
    },
    KernelSource {
        file: "ops/egnn_edge/egnn_edge.cu",
        source: include_str!("../ops/egnn_edge/egnn_edge.cu"),
        kernels: &[("egnn_edge_nodes", Hot::Yes)],
    },
    KernelSource {
        file: "ops/egnn_edge/egnn_edge_backward.cu",
        source: include_str!("../ops/egnn_edge/egnn_edge_backward.cu"),
        kernels: &[("egnn_edge_backward_nodes", Hot::Yes)],
    },
    KernelSource {
        file: "ops/edge_basis/edge_basis.cu",
        source: include_str!("../ops/edge_basis/edge_basis.cu"),
        kernels: &[
            ("spherical_harmonics_rows", Hot::Yes),
            ("kernel_basis_rows", Hot::Yes),
        ],
    },
    KernelSource {
        file: "ops/head_attention/head_attention.cu",
        source: include_str!("../ops/head_attention/head_attention.cu"),
        kernels: &[
            ("head_attention_rows", Hot::Yes),
            ("head_attention_rows_wide", Hot::Yes),
        ],
    },
    KernelSource {
        file: "ops/head_attention/head_attention_grad.cu",
        source: include_str!("../ops/head_attention/head_attention_grad.cu"),
        kernels: &[
            ("head_attention_grad_stats", Hot::Yes),
            ("head_attention_grad_rows", Hot::Yes),
        ],
    },
    KernelSource {
        file: "ops/neighbors/index_rows.cu",
        source: include_str!("../ops/neighbors/index_rows.cu"),
        kernels: &[("index_valid", Hot::No), ("edge_centers", Hot::No)],
    },
    KernelSource {
        file: "ops/top_k/take_along_rows.cu",
        source: include_str!("../ops/top_k/take_along_rows.cu"),
        kernels: &[("take_along_rows", Hot::No)],
    },
    KernelSource {
        file: "ops/stack/stack.cu",
        source: include_str!("../ops/stack/stack.cu"),
        kernels: &[("stack_slot", Hot::No)],
    },
    KernelSource {
        file: "ops/grad_scale/grad_scale.cu",
        source: include_str!("../ops/grad_scale/grad_scale.cu"),
        kernels: &[("grad_scale_forward", Hot::Yes)],
    },
    KernelSource {
        file: "exec/cuda/view_copy.cu",
        source: include_str!("cuda/view_copy.cu"),
        kernels: &[("view_copy", Hot::Yes)],
    },
    KernelSource {
        file: "exec/cuda/reduce.cu",
        source: include_str!("cuda/reduce.cu"),
        kernels: &[("reduce_sum", Hot::Yes), ("reduce_max", Hot::Yes)],
    },
    KernelSource {
        file: "exec/cuda/elementwise.cu",
        source: include_str!("cuda/elementwise.cu"),
        kernels: &[("elementwise_program", Hot::Yes)],
    },
];

/// The source that defines `kernel`, if any.
pub fn source_of(kernel: &str) -> Option<&'static KernelSource> {
    SOURCES
        .iter()
        .find(|s| s.kernels.iter().any(|(k, _)| *k == kernel))
}

/// The `ViewDesc` argument of `view_copy` (`exec/cuda/view_copy.cu`, same layout): a resolved
/// strided view, the reading rule of luminal 0.2's index and valid expressions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewDesc {
    pub rank: i32,
    /// 1 for a fake (expanded) axis: stride 0, always valid.
    pub fake: [i32; 6],
    pub len: [i64; 6],
    pub stride: [i64; 6],
    pub offset: [i64; 6],
    pub lo: [i64; 6],
    pub hi: [i64; 6],
}

impl ViewDesc {
    /// The view `st` with dynamic dimensions `dims`, as the CPU kernels read it.
    pub fn new(
        st: &luminal::prelude::ShapeTracker,
        dims: &rustc_hash::FxHashMap<char, usize>,
    ) -> ViewDesc {
        let v = super::view::View::new(st, dims);
        let mut d = ViewDesc {
            rank: v.axes.len().min(6) as i32,
            ..Default::default()
        };
        for (k, a) in v.axes.iter().take(6).enumerate() {
            d.fake[k] = i32::from(a.fake);
            d.len[k] = a.len as i64;
            d.stride[k] = a.stride as i64;
            d.offset[k] = a.offset;
            d.lo[k] = a.lo;
            d.hi[k] = a.hi;
        }
        d
    }

    /// The view without logical axis `k` (for a fake axis: the data it broadcasts once).
    pub fn without_axis(&self, k: usize) -> ViewDesc {
        let rank = self.rank.clamp(0, 6) as usize;
        let mut d = ViewDesc {
            rank: rank.saturating_sub(usize::from(k < rank)) as i32,
            ..Default::default()
        };
        for (to, from) in (0..rank).filter(|&i| i != k).enumerate() {
            d.fake[to] = self.fake[from];
            d.len[to] = self.len[from];
            d.stride[to] = self.stride[from];
            d.offset[to] = self.offset[from];
            d.lo[to] = self.lo[from];
            d.hi[to] = self.hi[from];
        }
        d
    }

    /// Logical elements (product of the axis lengths).
    pub fn elements(&self) -> usize {
        self.len[..self.rank.clamp(0, 6) as usize]
            .iter()
            .map(|&l| l.max(0) as usize)
            .product()
    }
}

/// One instruction of `elementwise_program` (`exec/cuda/elementwise.cu`, same layout): the
/// register program of [`FusedElementwise`](super::elementwise::FusedElementwise) encoded for
/// the device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceInstr {
    pub op: i32,
    pub a: i32,
    pub b: i32,
    pub c: f32,
}

impl DeviceInstr {
    /// The device encoding of one instruction (opcodes as in `elementwise.cu`).
    pub fn encode(ins: &super::elementwise::Instr) -> DeviceInstr {
        use super::elementwise::{BinaryFn, Instr, UnaryFn};
        let r = |i: usize| i32::try_from(i).unwrap_or(i32::MAX);
        let (op, a, b, c) = match *ins {
            Instr::Input(i) => (0, r(i), 0, 0.0),
            Instr::Const(c) => (1, 0, 0, c),
            Instr::Unary(f, a) => {
                let op = match f {
                    UnaryFn::Log2 => 2,
                    UnaryFn::Exp2 => 3,
                    UnaryFn::Sin => 4,
                    UnaryFn::Sqrt => 5,
                    UnaryFn::Recip => 6,
                };
                (op, r(a), 0, 0.0)
            }
            Instr::Binary(f, a, b) => {
                let op = match f {
                    BinaryFn::Add => 7,
                    BinaryFn::Mul => 8,
                    BinaryFn::Mod => 9,
                    BinaryFn::LessThan => 10,
                };
                (op, r(a), r(b), 0.0)
            }
        };
        DeviceInstr { op, a, b, c }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_listed_kernel_is_defined_in_its_source() {
        for s in super::SOURCES {
            for (k, _) in s.kernels {
                let decl = format!("__global__ void {k}(");
                assert!(s.source.contains(&decl), "{} lacks {decl}", s.file);
            }
            assert!(
                !s.source.contains("#include"),
                "{} includes a header",
                s.file
            );
            assert!(
                !s.source.contains("__forceinline__ float se3_"),
                "{} redefines a prelude function",
                s.file
            );
        }
    }
}
