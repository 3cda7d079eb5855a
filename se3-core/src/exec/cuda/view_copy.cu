// CUDA kernel of luminal's `Contiguous` and of every strided read: materialises a view of
// `src` in logical (row-major) order. Per logical axis k (outermost first): length len[k],
// physical stride stride[k], index offset offset[k], valid range lo[k] <= q < hi[k]; a fake
// (expanded) axis has stride 0 and is always valid; an element outside a valid range, or
// outside the buffer, reads 0. This is the reading rule of `exec::view::View` (luminal 0.2's
// index and valid expressions). One thread per output element, grid-stride.

struct ViewDesc {
    int rank;
    int fake[6];
    long long len[6];
    long long stride[6];
    long long offset[6];
    long long lo[6];
    long long hi[6];
};

extern "C" __global__ void view_copy(const float* __restrict__ src, unsigned long long src_len,
                                     float* __restrict__ out, unsigned long long total,
                                     ViewDesc v) {
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        unsigned long long rem = t;
        long long pos = 0;
        bool valid = true;
        for (int k = v.rank - 1; k >= 0; --k) {
            const long long len = v.len[k] > 0 ? v.len[k] : 1;
            const long long q = (long long)(rem % (unsigned long long)len);
            rem /= (unsigned long long)len;
            if (v.fake[k]) {
                continue;
            }
            if (q < v.lo[k] || q >= v.hi[k]) {
                valid = false;
            }
            pos += (q + v.offset[k]) * v.stride[k];
        }
        out[t] = (valid && pos >= 0 && (unsigned long long)pos < src_len) ? src[pos] : 0.0f;
    }
}
