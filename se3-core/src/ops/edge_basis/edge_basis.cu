// CUDA kernels of the per-edge angular quantities: real spherical harmonics and the
// SE(3)-Transformer kernel basis, both polynomials in the unit edge direction u,
//   out[e, col] = sum_t coef[t] u_x^a[t] u_y^b[t] u_z^c[t]   over the terms t of column col
// (a table in compressed columns: terms col_start[col] .. col_start[col + 1], each with its
// powers packed a | b << 8 | c << 16), one thread per (edge, column), grid-stride.
// Powers by repeated products and each monomial as (u_x^a u_y^b) u_z^c, as the graph builds
// them (layers::EdgeBasis::from_geometry).
//   spherical_harmonics_rows: u = rel / |rel|; (0, 1, 0) for |rel| < 1e-30.
//   kernel_basis_rows: u from rel and its given length dist, the graph's rule:
//     u = rel (1 / max(dist, 1e-30)) (dist >= 1e-30) + (0, 1, 0) (dist < 1e-30).

__device__ __forceinline__ float basis_power(float x, unsigned int n) {
    if (n == 0u) {
        return 1.0f;
    }
    float p = x;
    for (unsigned int k = 1; k < n; ++k) {
        p *= x;
    }
    return p;
}

__device__ __forceinline__ float basis_poly(float ux, float uy, float uz,
                                            const unsigned int* __restrict__ col_start,
                                            const unsigned int* __restrict__ powers,
                                            const float* __restrict__ coefs, unsigned int col) {
    float s = 0.0f;
    for (unsigned int t = col_start[col]; t < col_start[col + 1]; ++t) {
        const unsigned int p = powers[t];
        const float mono = basis_power(ux, p & 255u) * basis_power(uy, (p >> 8) & 255u) *
                           basis_power(uz, (p >> 16) & 255u);
        s += coefs[t] * mono;
    }
    return s;
}

extern "C" __global__ void spherical_harmonics_rows(
    const float* __restrict__ rel, const unsigned int* __restrict__ col_start,
    const unsigned int* __restrict__ powers, const float* __restrict__ coefs,
    float* __restrict__ out, unsigned int e, unsigned int cols) {
    const unsigned long long total = (unsigned long long)e * cols;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const unsigned long long edge = i / cols;
        const unsigned int col = (unsigned int)(i % cols);
        const float x = rel[edge * 3], y = rel[edge * 3 + 1], z = rel[edge * 3 + 2];
        const float d = sqrtf(x * x + y * y + z * z);
        const bool zero = d < 1e-30f;
        const float inv = zero ? 0.0f : 1.0f / d;
        out[i] = basis_poly(x * inv, zero ? 1.0f : y * inv, z * inv, col_start, powers, coefs,
                            col);
    }
}

extern "C" __global__ void kernel_basis_rows(
    const float* __restrict__ rel, const float* __restrict__ dist,
    const unsigned int* __restrict__ col_start, const unsigned int* __restrict__ powers,
    const float* __restrict__ coefs, float* __restrict__ out, unsigned int e,
    unsigned int cols) {
    const unsigned long long total = (unsigned long long)e * cols;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        const unsigned long long edge = i / cols;
        const unsigned int col = (unsigned int)(i % cols);
        const float d = dist[edge];
        const float zero = d < 1e-30f ? 1.0f : 0.0f;
        const float inv = (1.0f / fmaxf(d, 1e-30f)) * (1.0f - zero);
        const float ux = rel[edge * 3] * inv;
        const float uy = rel[edge * 3 + 1] * inv + zero;
        const float uz = rel[edge * 3 + 2] * inv;
        out[i] = basis_poly(ux, uy, uz, col_start, powers, coefs, col);
    }
}
