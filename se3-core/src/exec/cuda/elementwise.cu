// CUDA kernel of the fused elementwise chains: the register program that
// `exec::elementwise::ElementwiseFusion` builds (the same program on both backends), encoded as
// `Instr` rows and interpreted per element. Register r holds the value of instruction r; the
// last register is the output. Opcodes (`exec::cuda::elementwise::opcode`):
//   0 input a · 1 constant c · 2 log2 · 3 exp2 · 4 sin · 5 sqrt · 6 recip (of register a)
//   7 add · 8 mul · 9 mod (fmod, sign of a, as Rust's %) · 10 less-than (1 or 0) (registers a, b).
// Inputs are contiguous in the output's logical order, or scalars (scalar[i] != 0: read [0]).
// One thread per element, grid-stride; programs have at most 64 instructions.

struct Instr {
    int op;
    int a;
    int b;
    float c;
};

extern "C" __global__ void elementwise_program(const Instr* __restrict__ prog,
                                               unsigned int len,
                                               const float* const* __restrict__ inputs,
                                               const int* __restrict__ scalar,
                                               unsigned int out_reg,
                                               float* __restrict__ out,
                                               unsigned long long total) {
    float reg[64];
    const unsigned int n = len < 64 ? len : 64;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         t < total; t += step) {
        for (unsigned int r = 0; r < n; ++r) {
            const Instr ins = prog[r];
            float v = 0.0f;
            switch (ins.op) {
                case 0: v = inputs[ins.a][scalar[ins.a] ? 0 : t]; break;
                case 1: v = ins.c; break;
                case 2: v = log2f(reg[ins.a]); break;
                case 3: v = exp2f(reg[ins.a]); break;
                case 4: v = sinf(reg[ins.a]); break;
                case 5: v = sqrtf(reg[ins.a]); break;
                case 6: v = 1.0f / reg[ins.a]; break;
                case 7: v = reg[ins.a] + reg[ins.b]; break;
                case 8: v = reg[ins.a] * reg[ins.b]; break;
                case 9: v = fmodf(reg[ins.a], reg[ins.b]); break;
                case 10: v = reg[ins.a] < reg[ins.b] ? 1.0f : 0.0f; break;
                default: break;
            }
            reg[r] = v;
        }
        out[t] = out_reg < n ? reg[out_reg] : 0.0f;
    }
}
