// A CPU emulation of the CUDA execution model, enough to run se3's kernel sources unchanged
// (tests only): a launch runs the grid's blocks one after another; each block runs its
// threads as real host threads, so `__syncthreads` is a barrier over the block's threads,
// warp shuffles exchange values through a per-warp slot array between two warp barriers,
// atomics are `std::atomic_ref`, and `__shared__` variables are function statics (one copy,
// reused by the blocks in turn; launches are serialised by a process-wide mutex).
// A thread that returns early drops out of its block's and warp's barriers, as an exited CUDA
// thread no longer takes part in them.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_shim {

struct BlockState {
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<std::uint64_t> slots;
};

inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local unsigned int linear_tid = 0;
inline thread_local BlockState* state = nullptr;
inline dim3 block_dim;
inline dim3 grid_dim;

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

template <class T>
T exchange(T v, unsigned int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    const unsigned int lane = linear_tid & 31u;
    const unsigned int warp = linear_tid >> 5;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    state->slots[linear_tid] = bits;
    state->warps[warp]->arrive_and_wait();
    const unsigned int src = (warp << 5) + (src_lane & 31u);
    const std::uint64_t got = src < state->slots.size() ? state->slots[src] : bits;
    state->warps[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    (void)lane;
    return out;
}

// Runs `kernel()` over `grid` x `block`, each block's threads concurrently.
template <class F>
void launch(dim3 grid, dim3 block, F kernel) {
    std::lock_guard<std::mutex> guard(launch_mutex());
    block_dim = block;
    grid_dim = grid;
    const unsigned int threads = block.x * block.y * block.z;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                BlockState st;
                st.block = std::make_unique<std::barrier<>>(threads);
                for (unsigned int w = 0; w * 32 < threads; ++w) {
                    const unsigned int in_warp = threads - w * 32 < 32 ? threads - w * 32 : 32;
                    st.warps.push_back(std::make_unique<std::barrier<>>(in_warp));
                }
                st.slots.assign(threads, 0);
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned int t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t] {
                        linear_tid = t;
                        thread_idx = dim3(t % block.x, (t / block.x) % block.y,
                                          t / (block.x * block.y));
                        block_idx = dim3(bx, by, bz);
                        state = &st;
                        kernel();
                        st.warps[t >> 5]->arrive_and_drop();
                        st.block->arrive_and_drop();
                    });
                }
                for (auto& th : pool) th.join();
            }
}

}  // namespace cuda_shim

#define threadIdx (cuda_shim::thread_idx)
#define blockIdx (cuda_shim::block_idx)
#define blockDim (cuda_shim::block_dim)
#define gridDim (cuda_shim::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { cuda_shim::state->block->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned int, T v, int lane_mask, int = 32) {
    return cuda_shim::exchange(v, (cuda_shim::linear_tid & 31u) ^ (unsigned int)lane_mask);
}
template <class T>
T __shfl_down_sync(unsigned int, T v, unsigned int delta, int = 32) {
    const unsigned int lane = cuda_shim::linear_tid & 31u;
    return cuda_shim::exchange(v, lane + delta < 32 ? lane + delta : lane);
}
template <class T>
T __shfl_sync(unsigned int, T v, int src_lane, int = 32) {
    return cuda_shim::exchange(v, (unsigned int)src_lane);
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

inline float __int_as_float(unsigned int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline float __int_as_float(int bits) { return __int_as_float((unsigned int)bits); }
inline unsigned int __float_as_uint(float f) {
    unsigned int bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
}
// Round-to-nearest arithmetic that the compiler may not fuse (host floats round each op).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
// A barrier over the calling thread's warp.
inline void __syncwarp(unsigned int = 0xffffffffu) {
    cuda_shim::state->warps[cuda_shim::linear_tid >> 5]->arrive_and_wait();
}
