//! Safe launchers of the CPU-shim build of every CUDA kernel: each checks the slice lengths
//! the kernel will touch, then runs it over a grid of `grid` blocks of `block` threads (the
//! kernels are grid-stride, so a small grid exercises their loops).

use std::os::raw::c_uint;

pub use se3_core::exec::kernels::{DeviceInstr as Instr, ViewDesc};

mod ffi {
    use std::os::raw::{c_int, c_uint, c_ulonglong};

    use super::{Instr, ViewDesc};

    extern "C" {
        pub fn shim_gather_rows(
            g: c_uint,
            b: c_uint,
            table: *const f32,
            idx: *const f32,
            out: *mut f32,
            n: c_uint,
            c: c_uint,
            e: c_uint,
        );
        pub fn shim_scatter_add_atomic(
            g: c_uint,
            b: c_uint,
            src: *const f32,
            idx: *const f32,
            out: *mut f32,
            n: c_uint,
            c: c_uint,
            e: c_uint,
        );
        pub fn shim_bucket_count(
            g: c_uint,
            b: c_uint,
            idx: *const f32,
            counts: *mut c_uint,
            n: c_uint,
            e: c_uint,
        );
        pub fn shim_bucket_scan(
            g: c_uint,
            b: c_uint,
            counts: *const c_uint,
            start: *mut c_uint,
            cursor: *mut c_uint,
            n: c_uint,
        );
        pub fn shim_bucket_fill(
            g: c_uint,
            b: c_uint,
            idx: *const f32,
            cursor: *mut c_uint,
            order: *mut c_uint,
            n: c_uint,
            e: c_uint,
        );
        pub fn shim_bucket_sort(
            g: c_uint,
            b: c_uint,
            start: *const c_uint,
            order: *mut c_uint,
            n: c_uint,
        );
        pub fn shim_scatter_add_sorted(
            g: c_uint,
            b: c_uint,
            src: *const f32,
            start: *const c_uint,
            order: *const c_uint,
            out: *mut f32,
            n: c_uint,
            c: c_uint,
        );
        pub fn shim_segment_softmax_sorted(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            start: *const c_uint,
            order: *const c_uint,
            out: *mut f32,
            n: c_uint,
            h: c_uint,
        );
        pub fn shim_relative_positions(
            g: c_uint,
            b: c_uint,
            coords: *const f32,
            center: *const f32,
            neighbor: *const f32,
            rel: *mut f32,
            dist: *mut f32,
            n: c_uint,
            e: c_uint,
        );
        pub fn shim_layer_norm_gelu_rows(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            bias: *const f32,
            gamma: *const f32,
            beta: *const f32,
            out: *mut f32,
            rows: c_uint,
            w: c_uint,
            eps: f32,
        );
        pub fn shim_layer_norm_gelu_grad_rows(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            bias: *const f32,
            gamma: *const f32,
            beta: *const f32,
            grad: *const f32,
            out: *mut f32,
            rows: c_uint,
            w: c_uint,
            eps: f32,
        );
        pub fn shim_silu_layer_norm_rows(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            w: *const f32,
            bias: *const f32,
            gamma: *const f32,
            beta: *const f32,
            out: *mut f32,
            rows: c_uint,
            width: c_uint,
            n_in: c_uint,
            eps: f32,
        );
        pub fn shim_top_k_rows(
            g: c_uint,
            b: c_uint,
            scores: *const f32,
            mask: *const f32,
            keys: *mut f32,
            out: *mut f32,
            n: c_uint,
            m: c_uint,
            k: c_uint,
            largest: c_int,
        );
        pub fn shim_edge_conv_sorted(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            w: *const f32,
            src: *const f32,
            start: *const c_uint,
            order: *const c_uint,
            out: *mut f32,
            m: c_uint,
            ci: c_uint,
            co: c_uint,
            n: c_uint,
            diagonal: c_int,
        );
        pub fn shim_knn_rows(
            g: c_uint,
            b: c_uint,
            coords: *const f32,
            mask: *const f32,
            batch: *const f32,
            dists: *mut f32,
            out: *mut f32,
            n: c_uint,
            k: c_uint,
            r2: f32,
            exclude_self: c_int,
        );
        pub fn shim_radial_hidden_rows(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            w0: *const f32,
            b0: *const f32,
            g1: *const f32,
            be1: *const f32,
            w3: *const f32,
            b3: *const f32,
            g4: *const f32,
            be4: *const f32,
            hidden1: *mut f32,
            out: *mut f32,
            np: c_uint,
            e: c_uint,
            n_in: c_uint,
            h: c_uint,
            eps: f32,
        );
        pub fn shim_edge_contract_sum_nodes(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            nbr: *const f32,
            basis: *const f32,
            hid: *const f32,
            a: *const f32,
            w: *const f32,
            bias: *const f32,
            out: *mut f32,
            n: c_uint,
            k: c_uint,
            c_in: c_uint,
            mi: c_uint,
            mo: c_uint,
            nf: c_uint,
            hd: c_uint,
            cols: c_uint,
            c0: c_uint,
            cnt: c_uint,
        );
        pub fn shim_radial_edge_conv_sorted(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            basis: *const f32,
            hid: *const f32,
            weight: *const f32,
            bias: *const f32,
            w: *const f32,
            src: *const f32,
            start: *const c_uint,
            order: *const c_uint,
            out: *mut f32,
            m: c_uint,
            n: c_uint,
            ci: c_uint,
            di: c_uint,
            nf: c_uint,
            mo: c_uint,
            co: c_uint,
            hd: c_uint,
        );
        pub fn shim_edge_contract_logits_nodes(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            nbr: *const f32,
            basis: *const f32,
            hid: *const f32,
            q: *const f32,
            w: *const f32,
            bias: *const f32,
            out: *mut f32,
            n: c_uint,
            k: c_uint,
            c_in: c_uint,
            mi: c_uint,
            mo: c_uint,
            nf: c_uint,
            hd: c_uint,
            cols: c_uint,
            c0: c_uint,
            cnt: c_uint,
            head: c_uint,
        );
        pub fn shim_edge_contract_edge_grad_nodes(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            nbr: *const f32,
            basis: *const f32,
            hid: *const f32,
            rows: *const f32,
            u: *const f32,
            w: *const f32,
            bias: *const f32,
            out: *mut f32,
            n: c_uint,
            k: c_uint,
            c_in: c_uint,
            mi: c_uint,
            mo: c_uint,
            nf: c_uint,
            hd: c_uint,
            cols: c_uint,
            c0: c_uint,
            cnt: c_uint,
            want_h: c_uint,
            want_kx: c_uint,
        );
        pub fn shim_edge_contract_weight_grad_nodes(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            nbr: *const f32,
            basis: *const f32,
            hid: *const f32,
            rows: *const f32,
            u: *const f32,
            out: *mut f32,
            n: c_uint,
            k: c_uint,
            c_in: c_uint,
            mi: c_uint,
            mo: c_uint,
            nf: c_uint,
            hd: c_uint,
            cols: c_uint,
            c0: c_uint,
            cnt: c_uint,
        );
        pub fn shim_adjacency_init(
            g: c_uint,
            b: c_uint,
            adj: *const f32,
            reach: *mut f32,
            out: *mut f32,
            total: c_ulonglong,
        );
        pub fn shim_adjacency_step(
            g: c_uint,
            b: c_uint,
            reach: *const f32,
            next: *mut f32,
            out: *mut f32,
            n: c_uint,
            d: f32,
        );
        pub fn shim_egnn_edge_nodes(
            g: c_uint,
            b: c_uint,
            hi: *const f32,
            hj: *const f32,
            coors: *const f32,
            src: *const f32,
            valid: *const f32,
            edge_term: *const f32,
            phi_t: *const f32,
            edge_out_t: *const f32,
            edge_out_bias: *const f32,
            gate_w: *const f32,
            coors_hidden_t: *const f32,
            coors_hidden_bias: *const f32,
            coors_out: *const f32,
            scalars: *const f32,
            out: *mut f32,
            rows: c_uint,
            k: c_uint,
            h: c_uint,
            m_dim: c_uint,
            f: c_uint,
            four_m: c_uint,
            flags: c_uint,
        );
        pub fn shim_spherical_harmonics_rows(
            g: c_uint,
            b: c_uint,
            rel: *const f32,
            col_start: *const c_uint,
            powers: *const c_uint,
            coefs: *const f32,
            out: *mut f32,
            e: c_uint,
            cols: c_uint,
        );
        pub fn shim_kernel_basis_rows(
            g: c_uint,
            b: c_uint,
            rel: *const f32,
            dist: *const f32,
            col_start: *const c_uint,
            powers: *const c_uint,
            coefs: *const f32,
            out: *mut f32,
            e: c_uint,
            cols: c_uint,
        );
        pub fn shim_head_attention_rows(
            g: c_uint,
            b: c_uint,
            q: *const f32,
            k: *const f32,
            v: *const f32,
            mask: *const f32,
            out: *mut f32,
            batch: c_uint,
            n: c_uint,
            c: c_uint,
            heads: c_uint,
            dh: c_uint,
            alpha: f32,
            mode: c_int,
            zero_if_all_masked: c_int,
        );
        pub fn shim_head_attention_rows_wide(
            g: c_uint,
            b: c_uint,
            q: *const f32,
            k: *const f32,
            v: *const f32,
            mask: *const f32,
            out: *mut f32,
            batch: c_uint,
            n: c_uint,
            c: c_uint,
            heads: c_uint,
            dh: c_uint,
            alpha: f32,
            mode: c_int,
            zero_if_all_masked: c_int,
        );
        pub fn shim_stack_slot(
            g: c_uint,
            b: c_uint,
            src: *const f32,
            out: *mut f32,
            len: c_ulonglong,
            offset: c_ulonglong,
        );
        pub fn shim_grad_scale_forward(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            out: *mut f32,
            total: c_ulonglong,
        );
        pub fn shim_head_attention_grad_stats(
            g: c_uint,
            b: c_uint,
            q: *const f32,
            k: *const f32,
            v: *const f32,
            mask: *const f32,
            grad: *const f32,
            stats: *mut f32,
            batch: c_uint,
            n: c_uint,
            c: c_uint,
            heads: c_uint,
            dh: c_uint,
            alpha: f32,
            mode: c_int,
            with_r: c_int,
        );
        pub fn shim_head_attention_grad_rows(
            g: c_uint,
            b: c_uint,
            q: *const f32,
            k: *const f32,
            v: *const f32,
            mask: *const f32,
            grad: *const f32,
            stats: *const f32,
            out: *mut f32,
            batch: c_uint,
            n: c_uint,
            c: c_uint,
            heads: c_uint,
            dh: c_uint,
            alpha: f32,
            mode: c_int,
            zero_if_all_masked: c_int,
            wrt: c_int,
        );
        pub fn shim_egnn_edge_backward_nodes(
            g: c_uint,
            b: c_uint,
            hi: *const f32,
            hj: *const f32,
            coors: *const f32,
            src: *const f32,
            valid: *const f32,
            edge_term: *const f32,
            grad: *const f32,
            phi_t: *const f32,
            edge_out_t: *const f32,
            edge_out_bias: *const f32,
            gate_w: *const f32,
            coors_hidden_t: *const f32,
            coors_hidden_bias: *const f32,
            coors_out: *const f32,
            scalars: *const f32,
            out: *mut f32,
            rows: c_uint,
            k: c_uint,
            h: c_uint,
            m_dim: c_uint,
            f: c_uint,
            four_m: c_uint,
            flags: c_uint,
        );
        pub fn shim_index_valid(
            g: c_uint,
            b: c_uint,
            idx: *const f32,
            out: *mut f32,
            total: c_ulonglong,
        );
        pub fn shim_edge_centers(
            g: c_uint,
            b: c_uint,
            idx: *const f32,
            out: *mut f32,
            total: c_ulonglong,
            k: c_uint,
        );
        pub fn shim_take_along_rows(
            g: c_uint,
            b: c_uint,
            values: *const f32,
            idx: *const f32,
            out: *mut f32,
            n: c_uint,
            m: c_uint,
            k: c_uint,
        );
        pub fn shim_view_copy(
            g: c_uint,
            b: c_uint,
            src: *const f32,
            src_len: c_ulonglong,
            out: *mut f32,
            total: c_ulonglong,
            v: *const ViewDesc,
        );
        pub fn shim_reduce_sum(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            out: *mut f32,
            outer: c_uint,
            len: c_uint,
            inner: c_uint,
        );
        pub fn shim_reduce_max(
            g: c_uint,
            b: c_uint,
            x: *const f32,
            out: *mut f32,
            outer: c_uint,
            len: c_uint,
            inner: c_uint,
        );
        pub fn shim_elementwise_program(
            g: c_uint,
            b: c_uint,
            prog: *const Instr,
            len: c_uint,
            inputs: *const *const f32,
            scalar: *const c_int,
            out_reg: c_uint,
            out: *mut f32,
            total: c_ulonglong,
        );
    }
}

/// A launch shape: `grid` blocks of `block` threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: u32,
    pub block: u32,
}

fn u(x: usize) -> c_uint {
    c_uint::try_from(x).expect("shim sizes fit in 32 bits")
}

/// `gather_rows`: `out (E, C)` from `table (N, C)` at `idx (E,)`.
pub fn gather_rows(l: Launch, table: &[f32], idx: &[f32], c: usize) -> Vec<f32> {
    assert!(c == 0 || table.len().is_multiple_of(c));
    let n = table.len().checked_div(c).unwrap_or(0);
    let mut out = vec![f32::NAN; idx.len() * c];
    // SAFETY: the kernel reads table[..n c], idx[..e] and writes out[..e c], all in bounds.
    unsafe {
        ffi::shim_gather_rows(
            l.grid,
            l.block,
            table.as_ptr(),
            idx.as_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(c),
            u(idx.len()),
        )
    };
    out
}

/// `scatter_add_atomic` into a zeroed `(n, C)` output.
pub fn scatter_add_atomic(l: Launch, src: &[f32], idx: &[f32], n: usize, c: usize) -> Vec<f32> {
    assert_eq!(src.len(), idx.len() * c);
    let mut out = vec![0.0; n * c];
    // SAFETY: reads src[..e c], idx[..e]; writes out rows below n only.
    unsafe {
        ffi::shim_scatter_add_atomic(
            l.grid,
            l.block,
            src.as_ptr(),
            idx.as_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(c),
            u(idx.len()),
        )
    };
    out
}

/// Destination buckets of `idx` over `n` segments (the four bucket kernels):
/// `(start (n + 1), order)`.
pub fn buckets(l: Launch, idx: &[f32], n: usize) -> (Vec<u32>, Vec<u32>) {
    let e = idx.len();
    let mut counts = vec![0u32; n];
    let mut start = vec![u32::MAX; n + 1];
    let mut cursor = vec![0u32; n.max(1)];
    // SAFETY: each kernel touches counts/cursor[..n], start[..n + 1], order[..valid edges]
    // (at most e), idx[..e].
    unsafe {
        ffi::shim_bucket_count(
            l.grid,
            l.block,
            idx.as_ptr(),
            counts.as_mut_ptr(),
            u(n),
            u(e),
        );
        ffi::shim_bucket_scan(
            1,
            1024,
            counts.as_ptr(),
            start.as_mut_ptr(),
            cursor.as_mut_ptr(),
            u(n),
        );
    }
    let mut order = vec![u32::MAX; start[n] as usize];
    // SAFETY: as above; order has start[n] = number of valid edges slots.
    unsafe {
        ffi::shim_bucket_fill(
            l.grid,
            l.block,
            idx.as_ptr(),
            cursor.as_mut_ptr(),
            order.as_mut_ptr(),
            u(n),
            u(e),
        );
        ffi::shim_bucket_sort(l.grid, l.block, start.as_ptr(), order.as_mut_ptr(), u(n));
    }
    (start, order)
}

/// Deterministic scatter-add: buckets, then `scatter_add_sorted`.
pub fn scatter_add_sorted(l: Launch, src: &[f32], idx: &[f32], n: usize, c: usize) -> Vec<f32> {
    assert_eq!(src.len(), idx.len() * c);
    let (start, order) = buckets(l, idx, n);
    let mut out = vec![f32::NAN; n * c];
    // SAFETY: order holds edge ids below e; out has n c elements.
    unsafe {
        ffi::shim_scatter_add_sorted(
            l.grid,
            l.block,
            src.as_ptr(),
            start.as_ptr(),
            order.as_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(c),
        )
    };
    out
}

/// `segment_softmax_sorted` over `seg` with `n` segments, `x (E, H)`; masked edges give 0.
pub fn segment_softmax(l: Launch, x: &[f32], seg: &[f32], n: usize, h: usize) -> Vec<f32> {
    assert_eq!(x.len(), seg.len() * h);
    let (start, order) = buckets(l, seg, n);
    let mut out = vec![0.0; x.len()];
    // SAFETY: as scatter_add_sorted.
    unsafe {
        ffi::shim_segment_softmax_sorted(
            l.grid,
            l.block,
            x.as_ptr(),
            start.as_ptr(),
            order.as_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(h),
        )
    };
    out
}

/// `relative_positions`: `(rel (E, 3), dist (E,))`.
pub fn relative_positions(
    l: Launch,
    coords: &[f32],
    center: &[f32],
    neighbor: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(coords.len() % 3, 0);
    assert_eq!(center.len(), neighbor.len());
    let e = center.len();
    let (mut rel, mut dist) = (vec![f32::NAN; 3 * e], vec![f32::NAN; e]);
    // SAFETY: reads coords rows below n, center/neighbor[..e]; writes rel[..3e], dist[..e].
    unsafe {
        ffi::shim_relative_positions(
            l.grid,
            l.block,
            coords.as_ptr(),
            center.as_ptr(),
            neighbor.as_ptr(),
            rel.as_mut_ptr(),
            dist.as_mut_ptr(),
            u(coords.len() / 3),
            u(e),
        )
    };
    (rel, dist)
}

/// `layer_norm_gelu_grad_rows` over rows of width `bias.len()`: `(R + 3, W)`, the input's
/// gradient then the column sums of the bias', gamma's and beta's (zeroed before the launch,
/// as the device op does; the gradient rows start as NaN, so a row not written shows).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_gelu_grad(
    l: Launch,
    x: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    g: &[f32],
    eps: f32,
) -> Vec<f32> {
    let w = bias.len();
    assert!(w > 0 && x.len().is_multiple_of(w) && gamma.len() == w && beta.len() == w);
    assert_eq!(g.len(), x.len(), "gradient and input lengths differ");
    assert_eq!(
        l.block % 32,
        0,
        "layer_norm_gelu_grad_rows runs a warp per row"
    );
    let mut out = vec![f32::NAN; x.len()];
    out.extend(std::iter::repeat_n(0.0, 3 * w));
    // SAFETY: rows x w elements of x and g read, (rows + 3) x w of out written.
    unsafe {
        ffi::shim_layer_norm_gelu_grad_rows(
            l.grid,
            l.block,
            x.as_ptr(),
            bias.as_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            g.as_ptr(),
            out.as_mut_ptr(),
            u(x.len() / w),
            u(w),
            eps,
        )
    };
    out
}

/// `layer_norm_gelu_rows` over rows of width `bias.len()`.
pub fn layer_norm_gelu(
    l: Launch,
    x: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    let w = bias.len();
    assert!(w > 0 && x.len().is_multiple_of(w) && gamma.len() == w && beta.len() == w);
    assert_eq!(l.block % 32, 0, "layer_norm_gelu_rows runs a warp per row");
    let mut out = vec![f32::NAN; x.len()];
    // SAFETY: rows x w elements read and written.
    unsafe {
        ffi::shim_layer_norm_gelu_rows(
            l.grid,
            l.block,
            x.as_ptr(),
            bias.as_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            out.as_mut_ptr(),
            u(x.len() / w),
            u(w),
            eps,
        )
    };
    out
}

/// `silu_layer_norm_rows` over rows of width `bias.len()`: with `linear = Some((w, n_in))`
/// `x` is `f (R, n_in)` and the rows are `f w` (`w (n_in, W)`), else `x` is `(R, W)`.
pub fn silu_layer_norm(
    l: Launch,
    x: &[f32],
    linear: Option<(&[f32], usize)>,
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    let width = bias.len();
    assert!(width > 0 && gamma.len() == width && beta.len() == width);
    assert_eq!(l.block % 32, 0, "silu_layer_norm_rows runs a warp per row");
    let (w, n_in) = linear.unwrap_or((x, 0));
    let row_len = if n_in > 0 { n_in } else { width };
    assert!(x.len().is_multiple_of(row_len));
    if n_in > 0 {
        assert_eq!(w.len(), n_in * width);
    }
    let rows = x.len() / row_len;
    let mut out = vec![f32::NAN; rows * width];
    // SAFETY: reads x[..rows row_len], w[..n_in width] (when n_in > 0) and the vectors
    // [..width]; writes out[..rows width].
    unsafe {
        ffi::shim_silu_layer_norm_rows(
            l.grid,
            l.block,
            x.as_ptr(),
            w.as_ptr(),
            bias.as_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            out.as_mut_ptr(),
            u(rows),
            u(width),
            u(n_in),
            eps,
        )
    };
    out
}

/// `top_k_rows` over `scores (N, M)` with an optional mask of the same shape.
pub fn top_k(
    l: Launch,
    scores: &[f32],
    mask: Option<&[f32]>,
    m: usize,
    k: usize,
    largest: bool,
) -> Vec<f32> {
    assert!(m > 0 && scores.len().is_multiple_of(m));
    if let Some(mk) = mask {
        assert_eq!(mk.len(), scores.len());
    }
    let n = scores.len() / m;
    let (mut keys, mut out) = (vec![0.0; n * k], vec![f32::NAN; n * k]);
    // SAFETY: reads scores/mask[..n m]; writes keys/out[..n k].
    unsafe {
        ffi::shim_top_k_rows(
            l.grid,
            l.block,
            scores.as_ptr(),
            mask.map_or(std::ptr::null(), |m| m.as_ptr()),
            keys.as_mut_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(m),
            u(k),
            i32::from(largest),
        )
    };
    out
}

/// `view_copy` of `total` logical elements of `src` through `v`.
pub fn view_copy(l: Launch, src: &[f32], v: &ViewDesc) -> Vec<f32> {
    let total = v.elements();
    let mut out = vec![f32::NAN; total];
    // SAFETY: the kernel bounds-checks reads against src_len; writes out[..total].
    unsafe {
        ffi::shim_view_copy(
            l.grid,
            l.block,
            src.as_ptr(),
            src.len() as u64,
            out.as_mut_ptr(),
            total as u64,
            v,
        )
    };
    out
}

/// `reduce_sum` (or `reduce_max` if `max`) of `x (outer, len, inner)` over its middle axis.
pub fn reduce(l: Launch, x: &[f32], outer: usize, len: usize, inner: usize, max: bool) -> Vec<f32> {
    assert_eq!(x.len(), outer * len * inner);
    let mut out = vec![f32::NAN; outer * inner];
    let f = if max {
        ffi::shim_reduce_max
    } else {
        ffi::shim_reduce_sum
    };
    // SAFETY: reads x[..outer len inner], writes out[..outer inner].
    unsafe {
        f(
            l.grid,
            l.block,
            x.as_ptr(),
            out.as_mut_ptr(),
            u(outer),
            u(len),
            u(inner),
        )
    };
    out
}

/// `elementwise_program` over `total` elements with output register `out_reg`; `inputs`
/// each of length `total` or 1 (a scalar).
pub fn elementwise(
    l: Launch,
    prog: &[Instr],
    out_reg: usize,
    inputs: &[&[f32]],
    total: usize,
) -> Vec<f32> {
    assert!(out_reg < prog.len());
    for (r, ins) in prog.iter().enumerate() {
        match ins.op {
            0 => assert!((ins.a as usize) < inputs.len()),
            2..=6 => assert!((ins.a as usize) < r),
            7..=10 => assert!((ins.a as usize) < r && (ins.b as usize) < r),
            _ => {}
        }
    }
    assert!(prog.len() <= 64);
    let ptrs: Vec<*const f32> = inputs.iter().map(|s| s.as_ptr()).collect();
    let scalar: Vec<i32> = inputs
        .iter()
        .map(|s| {
            assert!(s.len() == total || s.len() == 1);
            i32::from(s.len() == 1 && total != 1)
        })
        .collect();
    let mut out = vec![f32::NAN; total];
    // SAFETY: operands index registers already written; inputs have total or 1 elements.
    unsafe {
        ffi::shim_elementwise_program(
            l.grid,
            l.block,
            prog.as_ptr(),
            u(prog.len()),
            ptrs.as_ptr(),
            scalar.as_ptr(),
            u(out_reg),
            out.as_mut_ptr(),
            total as u64,
        )
    };
    out
}

/// `edge_conv_sorted`: `out (n, co)` from `x (m, ci)`, `w (e, co, ci)` (or `(e, co)` when
/// `diagonal`, with `ci = co`), `src`, `dst (e,)`.
#[allow(clippy::too_many_arguments)]
pub fn edge_conv(
    l: Launch,
    x: &[f32],
    w: &[f32],
    src: &[f32],
    dst: &[f32],
    n: usize,
    ci: usize,
    co: usize,
    diagonal: bool,
) -> Vec<f32> {
    let e = src.len();
    assert_eq!(dst.len(), e);
    assert_eq!(w.len(), if diagonal { e * co } else { e * co * ci });
    assert!(ci > 0 && x.len().is_multiple_of(ci));
    let (start, order) = buckets(l, dst, n);
    let mut out = vec![f32::NAN; n * co];
    // SAFETY: reads x rows below m, w rows of edges below e; writes out[..n co].
    unsafe {
        ffi::shim_edge_conv_sorted(
            l.grid,
            l.block,
            x.as_ptr(),
            w.as_ptr(),
            src.as_ptr(),
            start.as_ptr(),
            order.as_ptr(),
            out.as_mut_ptr(),
            u(x.len() / ci),
            u(ci),
            u(co),
            u(n),
            i32::from(diagonal),
        )
    };
    out
}

/// `knn_rows`: `(n, k)` neighbour indices of `coords (n, 3)` (`-1` where missing), squared
/// radius `r2` (`f32::INFINITY` for none), optional `mask` and `batch (n,)`.
pub fn knn(
    l: Launch,
    coords: &[f32],
    mask: Option<&[f32]>,
    batch: Option<&[f32]>,
    k: usize,
    r2: f32,
    exclude_self: bool,
) -> Vec<f32> {
    assert!(coords.len().is_multiple_of(3));
    let n = coords.len() / 3;
    for v in [mask, batch].into_iter().flatten() {
        assert_eq!(v.len(), n);
    }
    let (mut dists, mut out) = (vec![0.0; n * k], vec![f32::NAN; n * k]);
    // SAFETY: reads coords[..3 n], mask/batch[..n]; writes dists/out[..n k].
    unsafe {
        ffi::shim_knn_rows(
            l.grid,
            l.block,
            coords.as_ptr(),
            mask.map_or(std::ptr::null(), |m| m.as_ptr()),
            batch.map_or(std::ptr::null(), |m| m.as_ptr()),
            dists.as_mut_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(k),
            r2,
            i32::from(exclude_self),
        )
    };
    out
}

/// The weights of `np` radial networks' hidden layers (see `se3_core::ops::radial_hidden`):
/// `w0 (np, n_in, h)`, `w3 (np, h, h)` (input x output), `b0, g1, be1, b3, g4, be4 (np, h)`.
#[derive(Debug, Clone)]
pub struct RadialWeights {
    pub w0: Vec<f32>,
    pub b0: Vec<f32>,
    pub g1: Vec<f32>,
    pub be1: Vec<f32>,
    pub w3: Vec<f32>,
    pub b3: Vec<f32>,
    pub g4: Vec<f32>,
    pub be4: Vec<f32>,
}

/// `radial_hidden_rows`: `(np, e, h)` hidden activations of `x (e, n_in)`.
pub fn radial_hidden(
    l: Launch,
    x: &[f32],
    w: &RadialWeights,
    np: usize,
    n_in: usize,
    h: usize,
    eps: f32,
) -> Vec<f32> {
    assert!(n_in > 0 && x.len().is_multiple_of(n_in));
    assert_eq!(l.block % 32, 0, "radial_hidden_rows runs a warp per row");
    let e = x.len() / n_in;
    assert_eq!(w.w0.len(), np * n_in * h);
    assert_eq!(w.w3.len(), np * h * h);
    for v in [&w.b0, &w.g1, &w.be1, &w.b3, &w.g4, &w.be4] {
        assert_eq!(v.len(), np * h);
    }
    let (mut hidden1, mut out) = (vec![f32::NAN; np * e * h], vec![f32::NAN; np * e * h]);
    // SAFETY: reads the lengths checked above; writes hidden1/out[..np e h].
    unsafe {
        ffi::shim_radial_hidden_rows(
            l.grid,
            l.block,
            x.as_ptr(),
            w.w0.as_ptr(),
            w.b0.as_ptr(),
            w.g1.as_ptr(),
            w.be1.as_ptr(),
            w.w3.as_ptr(),
            w.b3.as_ptr(),
            w.g4.as_ptr(),
            w.be4.as_ptr(),
            hidden1.as_mut_ptr(),
            out.as_mut_ptr(),
            u(np),
            u(e),
            u(n_in),
            u(h),
            eps,
        )
    };
    out
}

/// Sizes of an edge contraction: `n` nodes with `k` edges each, `x (n, c_in, mi)`,
/// `basis (n k, mo, mi, nf)`, `hidden (n k, hd)`, `w (nf c_in hd, cols)`, `b (nf c_in, cols)`.
#[derive(Debug, Clone, Copy)]
pub struct ContractSizes {
    pub n: usize,
    pub k: usize,
    pub c_in: usize,
    pub mi: usize,
    pub mo: usize,
    pub nf: usize,
    pub hd: usize,
    pub cols: usize,
}

/// The inputs of an edge contraction (shapes in [`ContractSizes`]; `a` holds one `(n, k)`
/// weight array per head).
#[derive(Debug, Clone)]
pub struct ContractInputs {
    pub x: Vec<f32>,
    pub nbr: Vec<f32>,
    pub basis: Vec<f32>,
    pub hidden: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub a: Vec<Vec<f32>>,
}

/// `edge_contract_sum_nodes`, one launch per head (as the CUDA backend): `(n, cols, mo)`,
/// head `t` writing columns `t cnt .. (t + 1) cnt`, `cnt = cols / heads`.
pub fn edge_contract_sum(l: Launch, s: ContractSizes, d: &ContractInputs) -> Vec<f32> {
    let (e, cf) = (s.n * s.k, s.nf * s.c_in);
    assert_eq!(d.x.len(), s.n * s.c_in * s.mi);
    assert_eq!(d.nbr.len(), e);
    assert_eq!(d.basis.len(), e * s.mo * s.mi * s.nf);
    assert_eq!(d.hidden.len(), e * s.hd);
    assert_eq!(d.w.len(), cf * s.hd * s.cols);
    assert_eq!(d.b.len(), cf * s.cols);
    assert!(!d.a.is_empty() && s.cols.is_multiple_of(d.a.len()));
    assert!(
        s.mo * s.k <= 2048 && s.mo * s.hd <= 4096,
        "shared memory bounds"
    );
    let cnt = s.cols / d.a.len();
    let mut out = vec![0.0; s.n * s.cols * s.mo];
    for (hh, a) in d.a.iter().enumerate() {
        assert_eq!(a.len(), e);
        // SAFETY: reads the lengths checked above; writes out[..n cols mo].
        unsafe {
            ffi::shim_edge_contract_sum_nodes(
                l.grid,
                l.block,
                d.x.as_ptr(),
                d.nbr.as_ptr(),
                d.basis.as_ptr(),
                d.hidden.as_ptr(),
                a.as_ptr(),
                d.w.as_ptr(),
                d.b.as_ptr(),
                out.as_mut_ptr(),
                u(s.n),
                u(s.k),
                u(s.c_in),
                u(s.mi),
                u(s.mo),
                u(s.nf),
                u(s.hd),
                u(s.cols),
                u(hh * cnt),
                u(cnt),
            )
        };
    }
    out
}

/// The last layer's gradients of `edge_contract` (its gradient kernels in `edge_contract.cu`),
/// every head's launch in turn: `edges = Some((hidden, message))` gives the per-edge gradients
/// `(n k, width)` (`edge_contract_edge_grad_nodes`: `dh` then `dKx`), `None` the weights' `(cf
/// hd + cf, cols)` (`edge_contract_weight_grad_nodes`: dW then db). `rows[t]` is head `t`'s `(n,
/// cnt, mo)`, `d.a[t]` its edge weights `(n k,)`.
pub fn edge_contract_grad(
    l: Launch,
    s: ContractSizes,
    d: &ContractInputs,
    rows: &[Vec<f32>],
    edges: Option<(bool, bool)>,
) -> Vec<f32> {
    let (e, cf) = (s.n * s.k, s.nf * s.c_in);
    assert_eq!(d.x.len(), s.n * s.c_in * s.mi);
    assert_eq!(d.nbr.len(), e);
    assert_eq!(d.basis.len(), e * s.mo * s.mi * s.nf);
    assert_eq!(d.hidden.len(), e * s.hd);
    assert_eq!(d.w.len(), cf * s.hd * s.cols);
    assert!(!d.a.is_empty() && d.a.len() == rows.len() && s.cols.is_multiple_of(d.a.len()));
    assert!(
        s.mo * s.k <= 2048 && s.mo * s.hd <= 4096 && s.k * s.hd <= 4096,
        "shared memory bounds"
    );
    let cnt = s.cols / d.a.len();
    let len = match edges {
        Some((h, m)) => e * (if h { s.hd } else { 0 } + if m { s.mo * cf } else { 0 }),
        None => (cf * s.hd + cf) * s.cols,
    };
    let mut out = vec![0.0; len];
    for (hh, (a, r)) in d.a.iter().zip(rows).enumerate() {
        assert_eq!(a.len(), e);
        assert_eq!(r.len(), s.n * cnt * s.mo);
        let dims = [
            s.n,
            s.k,
            s.c_in,
            s.mi,
            s.mo,
            s.nf,
            s.hd,
            s.cols,
            hh * cnt,
            cnt,
        ]
        .map(u);
        // SAFETY: reads the lengths checked above; writes `out`'s length.
        unsafe {
            if let Some((h, m)) = edges {
                ffi::shim_edge_contract_edge_grad_nodes(
                    l.grid,
                    l.block,
                    d.x.as_ptr(),
                    d.nbr.as_ptr(),
                    d.basis.as_ptr(),
                    d.hidden.as_ptr(),
                    r.as_ptr(),
                    a.as_ptr(),
                    d.w.as_ptr(),
                    d.b.as_ptr(),
                    out.as_mut_ptr(),
                    dims[0],
                    dims[1],
                    dims[2],
                    dims[3],
                    dims[4],
                    dims[5],
                    dims[6],
                    dims[7],
                    dims[8],
                    dims[9],
                    u32::from(h),
                    u32::from(m),
                )
            } else {
                ffi::shim_edge_contract_weight_grad_nodes(
                    l.grid,
                    l.block,
                    d.x.as_ptr(),
                    d.nbr.as_ptr(),
                    d.basis.as_ptr(),
                    d.hidden.as_ptr(),
                    r.as_ptr(),
                    a.as_ptr(),
                    out.as_mut_ptr(),
                    dims[0],
                    dims[1],
                    dims[2],
                    dims[3],
                    dims[4],
                    dims[5],
                    dims[6],
                    dims[7],
                    dims[8],
                    dims[9],
                )
            }
        };
    }
    out
}

/// Sizes of one degree pair of `radial_edge_conv`: `x (m, c_in di)`, `basis (e, di, nf mo)`,
/// `hidden (e, hd)`, `weight (c_out c_in nf, hd)`, `bias (c_out c_in nf,)`, output
/// `(n, c_out mo)`.
#[derive(Debug, Clone, Copy)]
pub struct RadialConvSizes {
    pub m: usize,
    pub n: usize,
    pub c_in: usize,
    pub di: usize,
    pub nf: usize,
    pub mo: usize,
    pub c_out: usize,
    pub hd: usize,
}

/// The inputs of `radial_edge_conv` (shapes in [`RadialConvSizes`]; `w`, `src`, `dst (e,)`).
#[derive(Debug, Clone)]
pub struct RadialConvInputs {
    pub x: Vec<f32>,
    pub basis: Vec<f32>,
    pub hidden: Vec<f32>,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub w: Vec<f32>,
    pub src: Vec<f32>,
    pub dst: Vec<f32>,
}

/// `radial_edge_conv_sorted` over the destination buckets of `dst`: `(n, c_out mo)`.
pub fn radial_edge_conv(l: Launch, s: RadialConvSizes, d: &RadialConvInputs) -> Vec<f32> {
    let e = d.src.len();
    let rows = s.c_out * s.c_in * s.nf;
    assert_eq!(d.x.len(), s.m * s.c_in * s.di);
    assert_eq!(d.basis.len(), e * s.di * s.nf * s.mo);
    assert_eq!(d.hidden.len(), e * s.hd);
    assert_eq!(d.weight.len(), rows * s.hd);
    assert_eq!(d.bias.len(), rows);
    assert!(d.w.len() == e && d.dst.len() == e);
    assert!(s.mo * s.hd <= 4096, "shared memory bound");
    let (start, order) = buckets(l, &d.dst, s.n);
    let mut out = vec![f32::NAN; s.n * s.c_out * s.mo];
    // SAFETY: reads the lengths checked above (bucket ids below e); writes out[..n c_out mo].
    unsafe {
        ffi::shim_radial_edge_conv_sorted(
            l.grid,
            l.block,
            d.x.as_ptr(),
            d.basis.as_ptr(),
            d.hidden.as_ptr(),
            d.weight.as_ptr(),
            d.bias.as_ptr(),
            d.w.as_ptr(),
            d.src.as_ptr(),
            start.as_ptr(),
            order.as_ptr(),
            out.as_mut_ptr(),
            u(s.m),
            u(s.n),
            u(s.c_in),
            u(s.di),
            u(s.nf),
            u(s.mo),
            u(s.c_out),
            u(s.hd),
        )
    };
    out
}

/// `edge_contract_logits_nodes`, one launch per head: `(heads, n, k)`, with `q[t] (n, cnt, mo)`
/// the query of head `t` (`cnt = cols / heads`); `d.a` is not read.
pub fn edge_contract_logits(
    l: Launch,
    s: ContractSizes,
    d: &ContractInputs,
    q: &[Vec<f32>],
) -> Vec<f32> {
    let (e, cf) = (s.n * s.k, s.nf * s.c_in);
    assert_eq!(d.x.len(), s.n * s.c_in * s.mi);
    assert_eq!(d.nbr.len(), e);
    assert_eq!(d.basis.len(), e * s.mo * s.mi * s.nf);
    assert_eq!(d.hidden.len(), e * s.hd);
    assert_eq!(d.w.len(), cf * s.hd * s.cols);
    assert_eq!(d.b.len(), cf * s.cols);
    assert!(!q.is_empty() && s.cols.is_multiple_of(q.len()));
    assert!(
        s.mo * s.k <= 2048 && s.mo * s.hd <= 2048 && s.k * s.hd <= 4096 && s.k <= 256,
        "shared memory bounds"
    );
    let cnt = s.cols / q.len();
    let mut out = vec![f32::NAN; q.len() * e];
    for (hh, qh) in q.iter().enumerate() {
        assert_eq!(qh.len(), s.n * cnt * s.mo);
        // SAFETY: reads the lengths checked above; writes out[hh n k..(hh + 1) n k].
        unsafe {
            ffi::shim_edge_contract_logits_nodes(
                l.grid,
                l.block,
                d.x.as_ptr(),
                d.nbr.as_ptr(),
                d.basis.as_ptr(),
                d.hidden.as_ptr(),
                qh.as_ptr(),
                d.w.as_ptr(),
                d.b.as_ptr(),
                out.as_mut_ptr(),
                u(s.n),
                u(s.k),
                u(s.c_in),
                u(s.mi),
                u(s.mo),
                u(s.nf),
                u(s.hd),
                u(s.cols),
                u(hh * cnt),
                u(cnt),
                u(hh),
            )
        };
    }
    out
}

/// `adjacency_init` then one `adjacency_step` per degree `2..=degrees` (as the CUDA backend):
/// the degree indices of `adj (n, n)`.
pub fn adjacency_degrees(l: Launch, adj: &[f32], n: usize, degrees: usize) -> Vec<f32> {
    assert_eq!(adj.len(), n * n);
    let (mut reach, mut next, mut out) = (
        vec![f32::NAN; n * n],
        vec![f32::NAN; n * n],
        vec![f32::NAN; n * n],
    );
    // SAFETY: every buffer holds n * n floats.
    unsafe {
        ffi::shim_adjacency_init(
            l.grid,
            l.block,
            adj.as_ptr(),
            reach.as_mut_ptr(),
            out.as_mut_ptr(),
            (n * n) as u64,
        )
    };
    for d in 2..=degrees {
        // SAFETY: as above.
        unsafe {
            ffi::shim_adjacency_step(
                l.grid,
                l.block,
                reach.as_ptr(),
                next.as_mut_ptr(),
                out.as_mut_ptr(),
                u(n),
                d as f32,
            )
        };
        std::mem::swap(&mut reach, &mut next);
    }
    out
}

/// The per-call inputs of `egnn_edge_nodes`: `rows` nodes with `k` edges each.
#[derive(Debug, Clone, Copy)]
pub struct EgnnInputs<'a> {
    /// `a = W1_i h + b1`, `(rows, H)`.
    pub hi: &'a [f32],
    /// `b = W1_j h`, `(rows, H)`.
    pub hj: &'a [f32],
    /// `(rows, 3)`.
    pub coors: &'a [f32],
    /// `(rows k,)`.
    pub src: &'a [f32],
    /// `(rows, k)`.
    pub valid: &'a [f32],
    /// `(rows k, H)` when the kernel has an edge term.
    pub edge_term: Option<&'a [f32]>,
}

/// `egnn_edge_nodes`: `(rows, M + 3)` pooled messages and coordinate shifts.
pub fn egnn_edge(
    l: Launch,
    kernel: &se3_core::ops::egnn_edge::EgnnEdgeKernel,
    d: &EgnnInputs,
    k: usize,
) -> Vec<f32> {
    use se3_core::ops::egnn_edge::device_args::EgnnDeviceArgs;
    let rows = d.coors.len() / 3;
    let h = kernel.hidden;
    assert!(l.block.is_multiple_of(32) && l.block <= 1024);
    assert!(EgnnDeviceArgs::fits(kernel));
    assert_eq!((d.hi.len(), d.hj.len()), (rows * h, rows * h));
    assert_eq!((d.src.len(), d.valid.len()), (rows * k, rows * k));
    assert_eq!(kernel.phi_t.len(), (2 * kernel.fourier_features + 1) * h);
    assert_eq!(kernel.edge_out_t.len(), h * kernel.m_dim);
    assert_eq!(kernel.edge_term, d.edge_term.is_some());
    if let Some(t) = d.edge_term {
        assert_eq!(t.len(), rows * k * h);
    }
    let a = EgnnDeviceArgs::new(kernel);
    let mut out = vec![f32::NAN; rows * (kernel.m_dim + 3)];
    // SAFETY: inputs checked above against (rows, k, H, M, F); weights of the kernel's own
    // shapes; out (rows, M + 3).
    unsafe {
        ffi::shim_egnn_edge_nodes(
            l.grid,
            l.block,
            d.hi.as_ptr(),
            d.hj.as_ptr(),
            d.coors.as_ptr(),
            d.src.as_ptr(),
            d.valid.as_ptr(),
            d.edge_term.unwrap_or(d.valid).as_ptr(),
            kernel.phi_t.as_ptr(),
            kernel.edge_out_t.as_ptr(),
            kernel.edge_out_bias.as_ptr(),
            a.gate_w.as_ptr(),
            a.coors_hidden_t.as_ptr(),
            a.coors_hidden_bias.as_ptr(),
            a.coors_out.as_ptr(),
            a.scalars.as_ptr(),
            out.as_mut_ptr(),
            u(rows),
            u(k),
            u(h),
            u(kernel.m_dim),
            u(kernel.fourier_features),
            u(a.four_m),
            a.flags,
        )
    };
    out
}

fn check_table(t: &se3_core::ops::edge_basis::PolynomialTable) {
    assert_eq!(t.col_start.len(), t.cols + 1);
    assert_eq!(t.powers.len(), t.coefs.len());
    assert!(t.col_start.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(t.col_start[t.cols] as usize, t.powers.len());
}

/// `spherical_harmonics_rows`: `(E, cols)` of the table at the directions of `rel (E, 3)`.
pub fn spherical_harmonics(
    l: Launch,
    rel: &[f32],
    t: &se3_core::ops::edge_basis::PolynomialTable,
) -> Vec<f32> {
    check_table(t);
    let e = rel.len() / 3;
    let mut out = vec![f32::NAN; e * t.cols];
    // SAFETY: rel (e, 3); the table checked above; out (e, cols).
    unsafe {
        ffi::shim_spherical_harmonics_rows(
            l.grid,
            l.block,
            rel.as_ptr(),
            t.col_start.as_ptr(),
            t.powers.as_ptr(),
            t.coefs.as_ptr(),
            out.as_mut_ptr(),
            u(e),
            u(t.cols),
        )
    };
    out
}

/// `kernel_basis_rows`: `(E, cols)` of the table at `rel (E, 3)` with lengths `dist (E,)`.
pub fn kernel_basis(
    l: Launch,
    rel: &[f32],
    dist: &[f32],
    t: &se3_core::ops::edge_basis::PolynomialTable,
) -> Vec<f32> {
    check_table(t);
    let e = dist.len();
    assert_eq!(rel.len(), 3 * e);
    let mut out = vec![f32::NAN; e * t.cols];
    // SAFETY: rel (e, 3), dist (e,); the table checked above; out (e, cols).
    unsafe {
        ffi::shim_kernel_basis_rows(
            l.grid,
            l.block,
            rel.as_ptr(),
            dist.as_ptr(),
            t.col_start.as_ptr(),
            t.powers.as_ptr(),
            t.coefs.as_ptr(),
            out.as_mut_ptr(),
            u(e),
            u(t.cols),
        )
    };
    out
}

/// The largest head vector `head_attention_rows` holds in shared memory (`HEAD_MAX_D`);
/// above it the CUDA backend launches `head_attention_rows_wide`.
pub const HEAD_MAX_D: usize = 2048;

/// `head_attention_rows` (or `head_attention_rows_wide` above [`HEAD_MAX_D`]) for an [`HeadAttention`](se3_core::ops::head_attention::HeadAttention)
/// op: `q`, `k`, `v` `(b, n, c, heads dh)`, `mask (b, n)`; output as `q`.
#[allow(clippy::too_many_arguments)]
pub fn head_attention(
    l: Launch,
    op: &se3_core::ops::head_attention::HeadAttention,
    (q, k, v, mask): (&[f32], &[f32], &[f32], &[f32]),
    (b, n, c, dh): (usize, usize, usize, usize),
) -> Vec<f32> {
    use se3_core::ops::head_attention::HeadLogits;
    let heads = op.heads.max(1);
    let total = b * n * c * heads * dh;
    assert_eq!((q.len(), k.len(), v.len()), (total, total, total));
    assert_eq!(mask.len(), b * n);
    assert!(l.block.is_multiple_of(32) && l.block <= 256);
    let (alpha, mode) = match op.logits {
        HeadLogits::Dot => (op.scale, 0),
        HeadLogits::L2Distance => (2.0 * op.scale, 1),
    };
    let mut out = vec![f32::NAN; total];
    // the kernel the CUDA backend picks for this head vector size
    let launch = if c * dh <= HEAD_MAX_D {
        ffi::shim_head_attention_rows
    } else {
        ffi::shim_head_attention_rows_wide
    };
    // SAFETY: q, k, v, out (b, n, c, heads dh) and mask (b, n), checked above.
    unsafe {
        launch(
            l.grid,
            l.block,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            mask.as_ptr(),
            out.as_mut_ptr(),
            u(b),
            u(n),
            u(c),
            u(heads),
            u(dh),
            alpha,
            mode,
            i32::from(op.zero_if_all_masked),
        )
    };
    out
}

/// `index_valid` over `idx`.
pub fn index_valid(l: Launch, idx: &[f32]) -> Vec<f32> {
    let mut out = vec![f32::NAN; idx.len()];
    // SAFETY: idx and out hold idx.len() elements.
    unsafe {
        ffi::shim_index_valid(
            l.grid,
            l.block,
            idx.as_ptr(),
            out.as_mut_ptr(),
            idx.len() as u64,
        )
    };
    out
}

/// `edge_centers` of `idx (N, k)`.
pub fn edge_centers(l: Launch, idx: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; idx.len()];
    // SAFETY: idx and out hold idx.len() elements.
    unsafe {
        ffi::shim_edge_centers(
            l.grid,
            l.block,
            idx.as_ptr(),
            out.as_mut_ptr(),
            idx.len() as u64,
            u(k),
        )
    };
    out
}

/// `take_along_rows`: `out (n, k)` from `values (n, m)` at `idx (n, k)`.
pub fn take_along_rows(l: Launch, values: &[f32], idx: &[f32], m: usize, k: usize) -> Vec<f32> {
    assert!(m > 0 && k > 0 && values.len().is_multiple_of(m));
    let n = values.len() / m;
    assert_eq!(idx.len(), n * k);
    let mut out = vec![f32::NAN; n * k];
    // SAFETY: values (n, m), idx and out (n, k), checked above.
    unsafe {
        ffi::shim_take_along_rows(
            l.grid,
            l.block,
            values.as_ptr(),
            idx.as_ptr(),
            out.as_mut_ptr(),
            u(n),
            u(m),
            u(k),
        )
    };
    out
}

/// `stack_slot` once per part: the parts (of one length) one after the other.
pub fn stack(l: Launch, parts: &[&[f32]]) -> Vec<f32> {
    let len = parts.first().map_or(0, |p| p.len());
    assert!(parts.iter().all(|p| p.len() == len));
    let mut out = vec![f32::NAN; len * parts.len()];
    for (p, part) in parts.iter().enumerate() {
        // SAFETY: part holds len values, out parts.len() len.
        unsafe {
            ffi::shim_stack_slot(
                l.grid,
                l.block,
                part.as_ptr(),
                out.as_mut_ptr(),
                len as u64,
                (p * len) as u64,
            )
        };
    }
    out
}

/// `grad_scale_forward` over `x`.
pub fn grad_scale_forward(l: Launch, x: &[f32]) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len()];
    // SAFETY: x and out hold x.len() values.
    unsafe {
        ffi::shim_grad_scale_forward(
            l.grid,
            l.block,
            x.as_ptr(),
            out.as_mut_ptr(),
            x.len() as u64,
        )
    };
    out
}

/// `q`, `k`, `v`, `mask` and the output gradient `g` of an attention backward.
pub type AttentionGradInputs<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32], &'a [f32]);

/// `head_attention_grad_stats` then `head_attention_grad_rows`: the gradient of the input
/// `wrt` of a [`HeadAttention`](se3_core::ops::head_attention::HeadAttention) op given the
/// output gradient `g` (all `(b, n, c, heads dh)`, `mask (b, n)`).
pub fn head_attention_grad(
    l: Launch,
    op: &se3_core::ops::head_attention::HeadAttention,
    wrt: se3_core::ops::head_attention::AttentionInput,
    (q, k, v, mask, g): AttentionGradInputs<'_>,
    (b, n, c, dh): (usize, usize, usize, usize),
) -> Vec<f32> {
    use se3_core::ops::head_attention::{AttentionInput, HeadLogits};
    let heads = op.heads.max(1);
    let total = b * n * c * heads * dh;
    assert_eq!(
        (q.len(), k.len(), v.len(), g.len()),
        (total, total, total, total)
    );
    assert_eq!(mask.len(), b * n);
    assert!(l.block.is_multiple_of(32) && l.block <= 256);
    let (alpha, mode) = match op.logits {
        HeadLogits::Dot => (op.scale, 0),
        HeadLogits::L2Distance => (2.0 * op.scale, 1),
    };
    let code = match wrt {
        AttentionInput::Query => 0,
        AttentionInput::Key => 1,
        AttentionInput::Value => 2,
    };
    let mut stats = vec![f32::NAN; b * heads * n * 3];
    let mut out = vec![f32::NAN; total];
    // SAFETY: q, k, v, g, out (b, n, c, heads dh), mask (b, n), stats (b heads n, 3), checked.
    unsafe {
        ffi::shim_head_attention_grad_stats(
            l.grid,
            l.block,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            mask.as_ptr(),
            g.as_ptr(),
            stats.as_mut_ptr(),
            u(b),
            u(n),
            u(c),
            u(heads),
            u(dh),
            alpha,
            mode,
            i32::from(code != 2),
        );
        ffi::shim_head_attention_grad_rows(
            l.grid,
            l.block,
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            mask.as_ptr(),
            g.as_ptr(),
            stats.as_ptr(),
            out.as_mut_ptr(),
            u(b),
            u(n),
            u(c),
            u(heads),
            u(dh),
            alpha,
            mode,
            i32::from(op.zero_if_all_masked),
            code,
        );
    }
    out
}

/// `egnn_edge_backward_nodes`: `(rows k + rows, H + 3)`, per edge `[d pre, d r]` then per
/// node `[d a, d x]`, given the output gradient `grad (rows, M + 3)`.
pub fn egnn_edge_backward(
    l: Launch,
    kernel: &se3_core::ops::egnn_edge::EgnnEdgeKernel,
    d: &EgnnInputs,
    grad: &[f32],
    k: usize,
) -> Vec<f32> {
    use se3_core::ops::egnn_edge::device_args::EgnnDeviceArgs;
    let rows = d.coors.len() / 3;
    let h = kernel.hidden;
    assert!(l.block.is_multiple_of(32) && l.block <= 1024);
    assert!(EgnnDeviceArgs::fits_backward(kernel));
    assert_eq!((d.hi.len(), d.hj.len()), (rows * h, rows * h));
    assert_eq!((d.src.len(), d.valid.len()), (rows * k, rows * k));
    assert_eq!(grad.len(), rows * (kernel.m_dim + 3));
    assert_eq!(kernel.phi_t.len(), (2 * kernel.fourier_features + 1) * h);
    assert_eq!(kernel.edge_out_t.len(), h * kernel.m_dim);
    assert_eq!(kernel.edge_term, d.edge_term.is_some());
    if let Some(t) = d.edge_term {
        assert_eq!(t.len(), rows * k * h);
    }
    let a = EgnnDeviceArgs::new(kernel);
    let mut out = vec![f32::NAN; (rows * k + rows) * (h + 3)];
    // SAFETY: inputs checked above against (rows, k, H, M, F); weights of the kernel's own
    // shapes; out (rows k + rows, H + 3).
    unsafe {
        ffi::shim_egnn_edge_backward_nodes(
            l.grid,
            l.block,
            d.hi.as_ptr(),
            d.hj.as_ptr(),
            d.coors.as_ptr(),
            d.src.as_ptr(),
            d.valid.as_ptr(),
            d.edge_term.unwrap_or(d.valid).as_ptr(),
            grad.as_ptr(),
            kernel.phi_t.as_ptr(),
            kernel.edge_out_t.as_ptr(),
            kernel.edge_out_bias.as_ptr(),
            a.gate_w.as_ptr(),
            a.coors_hidden_t.as_ptr(),
            a.coors_hidden_bias.as_ptr(),
            a.coors_out.as_ptr(),
            a.scalars.as_ptr(),
            out.as_mut_ptr(),
            u(rows),
            u(k),
            u(h),
            u(kernel.m_dim),
            u(kernel.fourier_features),
            u(a.four_m),
            a.flags,
        )
    };
    out
}
