// argmax.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).

// Greedy decoding on the device: the next token = argmax(logits) (the first of equal maxima, as
// NumPy's), written as state = (token, position + 1) for the next step and logged in
// tokens[position + 1] for the host to read while the GPU already runs the next step.
// One block of 1024 threads (a 128K vocabulary is 512 KB, just written, in L2).
extern "C" __global__ void argmax_next(const float* logits, int n, int* state, int* tokens) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float v = __int_as_float(0xff800000);
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float u = logits[i];
        if (u > v) { v = u; idx = i; }            // strided: a thread's first max has its smallest index
    }
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_down_sync(0xffffffffu, v, o);
        int j = __shfl_down_sync(0xffffffffu, idx, o);
        if (u > v || (u == v && j < idx)) { v = u; idx = j; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = v; bi[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        int n_warps = blockDim.x >> 5;
        v = lane < n_warps ? bv[lane] : __int_as_float(0xff800000);
        idx = lane < n_warps ? bi[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float u = __shfl_down_sync(0xffffffffu, v, o);
            int j = __shfl_down_sync(0xffffffffu, idx, o);
            if (u > v || (u == v && j < idx)) { v = u; idx = j; }
        }
        if (lane == 0) {
            if (idx == 0x7fffffff) idx = 0;           // all NaN: a valid id rather than garbage
            int pos = state[1] + 1;
            state[0] = idx; state[1] = pos; tokens[pos] = idx;
        }
    }
}
