// CUDA kernel of `neighbors`: per query row i of coords (N, 3), the indices of the k nearest
// points j by squared distance d = ((dx*dx + dy*dy) + dz*dz), dx = x_j - x_i (rounded op by op,
// no fused multiply-add, so d is the CPU kernel's value bit for bit), kept when d <= r2 (r2 is
// +inf without a radius; a NaN distance is never kept). Order: increasing (d, j), the CPU's
// tie rule. Candidates skip masked points (mask 0), other batch items (batch values compared
// by bits) and, with exclude_self, j == i. A masked query row and the slots after the found
// neighbours hold -1.
// Brute force: one thread per query row, grid-stride; the sorted best list is kept in the
// row's output slots (indices) and in `dists` (N, k) scratch.

extern "C" __global__ void knn_rows(const float* __restrict__ coords,
                                    const float* __restrict__ mask,
                                    const float* __restrict__ batch,
                                    float* __restrict__ dists, float* __restrict__ out,
                                    unsigned int n, unsigned int k, float r2, int exclude_self) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += gridDim.x * blockDim.x) {
        if (k == 0) {
            return;
        }
        float* best_d = dists + (unsigned long long)i * k;
        float* best_j = out + (unsigned long long)i * k;
        unsigned int len = 0;
        if (mask == 0 || mask[i] != 0.0f) {
            const float px = coords[3ull * i], py = coords[3ull * i + 1],
                        pz = coords[3ull * i + 2];
            const unsigned int key = batch != 0 ? __float_as_uint(batch[i]) : 0u;
            for (unsigned int j = 0; j < n; ++j) {
                if ((exclude_self && j == i) || (mask != 0 && mask[j] == 0.0f) ||
                    (batch != 0 && __float_as_uint(batch[j]) != key)) {
                    continue;
                }
                const float dx = __fsub_rn(coords[3ull * j], px);
                const float dy = __fsub_rn(coords[3ull * j + 1], py);
                const float dz = __fsub_rn(coords[3ull * j + 2], pz);
                const float d = __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)),
                                          __fmul_rn(dz, dz));
                if (!(d <= r2)) {
                    continue;
                }
                // j rises, so an equal distance already in the list has the smaller index:
                // (d, j) is better than the last entry only when d is strictly smaller.
                if (len == k && !(d < best_d[k - 1])) {
                    continue;
                }
                unsigned int p = len < k ? len : k - 1;
                while (p > 0 && best_d[p - 1] > d) {
                    best_d[p] = best_d[p - 1];
                    best_j[p] = best_j[p - 1];
                    --p;
                }
                best_d[p] = d;
                best_j[p] = (float)j;
                if (len < k) {
                    ++len;
                }
            }
        }
        for (unsigned int s = len; s < k; ++s) {
            best_j[s] = -1.0f;
        }
    }
}
