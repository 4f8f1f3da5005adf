// rope.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).

// RoPE on the new token's q and k (Meta's neighbouring pairs), then k and v into the cache.
// One launch, 1.5 us on an H100, where model.forward's RoPE and cache writes are ~10 CuPy ops.
// qkv: [q (H*hd) | k (KV*hd) | v (KV*hd)]; cos/sin: (max_len, hd/2); state[1] = position.
// Cache: (n_layers, KV, max_len, hd) float32, the layout of llama_np.kv_cache.KVCache.
extern "C" __global__ void rope_store(float* qkv, const float* cos_t, const float* sin_t, const int* state,
                                      float* k_cache, float* v_cache, int H, int KV, int hd,
                                      int max_len, int layer) {
    int pos = state[1], half = hd / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n_rot = (H + KV) * half;
    if (i < n_rot) {
        int head = i / half, p = i % half;
        float c = cos_t[(size_t)pos * half + p], s = sin_t[(size_t)pos * half + p];
        float* v = qkv + (size_t)head * hd + 2 * p;
        float a = v[0], b = v[1];
        float ra = a * c - b * s, rb = a * s + b * c;      // (a + ib)(c + is)
        if (head < H) { v[0] = ra; v[1] = rb; }
        else {
            float* dst = k_cache + (((size_t)layer * KV + (head - H)) * max_len + pos) * hd + 2 * p;
            dst[0] = ra; dst[1] = rb;
        }
    } else if (i < n_rot + KV * hd) {
        int j = i - n_rot, kv = j / hd, d = j % hd;
        v_cache[(((size_t)layer * KV + kv) * max_len + pos) * hd + d] = qkv[(size_t)(H + KV) * hd + j];
    }
}
