// rmsnorm.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).

// RMSNorm, one block of 256 threads per row: y = x / sqrt(mean(x^2) + eps) * w.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int dim, float eps) {
    __shared__ float red[256];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* yr = y + (size_t)blockIdx.x * dim;
    float s = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) { float v = xr[i]; s += v * v; }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    float r = 1.0f / sqrtf(red[0] / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}
