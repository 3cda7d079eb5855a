// CUDA kernel of `top_k`: per row i of scores (N, M), the column indices of the k best entries
// (largest or smallest), best first, ties to the smaller index, NaN and masked entries
// (mask 0) skipped, -1 for missing slots: the CPU kernel's rule. Keys are negated for
// `largest` so "smaller key, then smaller index" is always better.
// One thread per row, grid-stride; the sorted best list is kept in the row's output slots
// (indices) and in `keys` (N, k) scratch.

extern "C" __global__ void top_k_rows(const float* __restrict__ scores,
                                      const float* __restrict__ mask,
                                      float* __restrict__ keys, float* __restrict__ out,
                                      unsigned int n, unsigned int m, unsigned int k,
                                      int largest) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += gridDim.x * blockDim.x) {
        if (k == 0) {
            return;
        }
        float* key = keys + (unsigned long long)i * k;
        float* idx = out + (unsigned long long)i * k;
        unsigned int len = 0;
        for (unsigned int j = 0; j < m; ++j) {
            const unsigned long long at = (unsigned long long)i * m + j;
            if (mask != 0 && mask[at] == 0.0f) {
                continue;
            }
            const float v = scores[at];
            const float kv = largest ? -v : v;
            if (kv != kv) {
                continue;  // NaN
            }
            if (len == k && !(kv < key[k - 1])) {
                continue;
            }
            // insert after every entry with key <= kv
            unsigned int p = len < k ? len : k - 1;
            while (p > 0 && key[p - 1] > kv) {
                if (p < k) {
                    key[p] = key[p - 1];
                    idx[p] = idx[p - 1];
                }
                --p;
            }
            key[p] = kv;
            idx[p] = (float)j;
            if (len < k) {
                ++len;
            }
        }
        for (unsigned int s = len; s < k; ++s) {
            idx[s] = -1.0f;
        }
    }
}
