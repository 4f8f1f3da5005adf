// attention.cu, one of llama_np.gpu's kernel files (llama_np/kernels/__init__.py joins them).

// A decode step's whole attention in one launch: RoPE on the new token's query and key, its key
// and value into the cache, attention of the query over positions 0..pos (pos = state[1]), and the
// output. Three launches before (rope_store, attn_partial, attn_combine); a small model like
// SmolLM2 is bounded by how many kernels a step runs one after another, not by their work.
//
// The keys are split over blocks ("flash-decoding"): block (h, part) takes keys part*chunk ..
// part*chunk+chunk-1 of head h and writes its own max m, sum l = sum exp(score - m) and
// acc = sum exp(score - m) v. One block per head would leave most of the GPU idle (32 blocks for
// Llama 3 8B) while each block reads its whole K and V alone. The last block of head h to finish
// (counted in done[h], CUDA's threadFenceReduction pattern) merges the parts into out and resets
// done[h] to 0 for the next step: no second launch, and the counters are ready for a graph replay.
//
// qkv: [q (H*hd) | k (KV*hd) | v (KV*hd)], as the wqkv product wrote it (not modified here);
// cos/sin: (max_len, hd/2); cache: (n_layers, KV, max_len, hd) float32, llama_np.kv_cache's layout.
// RoPE pairs are Meta's neighbours (2p, 2p+1). Each of a kv head's n_rep query heads writes the
// same new key and value (bit for bit the same values: a benign race), in the block whose part
// holds pos, before that block reads its keys.
// Threads work in groups of G = hd/4 (<= 32, so a group sits inside one warp), each thread one
// float4 of a key or value row: every load is 16 bytes and a group reads a row in one go.
// Shared memory: hd floats (the rotated query), chunk scores (padded to 4), 4 * blockDim floats.
extern "C" __global__ void attn_decode(const float* qkv, const float* cos_t, const float* sin_t, const int* state,
                                       float* k_cache, float* v_cache, float* pm, float* pl, float* pacc,
                                       int* done, float* out, int H, int KV, int hd, int max_len, int layer,
                                       float scale, int chunk) {
    extern __shared__ __align__(16) float sh[];     // float4 reads of qs and red
    float* qs = sh;
    float* scores = sh + hd;
    float* red = scores + ((chunk + 3) & ~3);
    __shared__ int last;
    int h = blockIdx.x, part = blockIdx.y, n_parts = gridDim.y;
    int kv = h / (H / KV), pos = state[1], half = hd / 2;
    int s0 = part * chunk, n = min(s0 + chunk, pos + 1) - s0;     // keys of this part (may be <= 0)
    size_t o = (size_t)h * n_parts + part;
    size_t rows = ((size_t)layer * KV + kv) * max_len;              // this kv head's first cache row
    int tid = threadIdx.x, G = hd / 4, g = tid / G, c = tid % G, n_groups = blockDim.x / G;
    const float* co = cos_t + (size_t)pos * half;
    const float* si = sin_t + (size_t)pos * half;

    // 1. the query of head h, rotated: (a + ib)(cos + i sin)
    for (int p = tid; p < half; p += blockDim.x) {
        float a = qkv[(size_t)h * hd + 2 * p], b = qkv[(size_t)h * hd + 2 * p + 1];
        qs[2 * p] = a * co[p] - b * si[p];
        qs[2 * p + 1] = a * si[p] + b * co[p];
    }
    // 2. the part that holds pos writes the new key (rotated) and value into the cache first
    if (n > 0 && pos < s0 + chunk) {
        const float* kn = qkv + (size_t)(H + kv) * hd;
        const float* vn = qkv + (size_t)(H + KV + kv) * hd;
        float* kd = k_cache + (rows + pos) * hd;
        for (int p = tid; p < half; p += blockDim.x) {
            float a = kn[2 * p], b = kn[2 * p + 1];
            kd[2 * p] = a * co[p] - b * si[p];
            kd[2 * p + 1] = a * si[p] + b * co[p];
        }
        for (int d = tid; d < hd; d += blockDim.x) v_cache[(rows + pos) * hd + d] = vn[d];
    }
    __syncthreads();      // the query, and this block's cache writes, seen by all its threads

    if (n <= 0) {         // past the last position: an empty part (weight exp(-inf) = 0 below)
        if (tid == 0) { pm[o] = __int_as_float(0xff800000); pl[o] = 0.f; }
        if (tid < G) reinterpret_cast<float4*>(pacc + o * hd)[tid] = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
        const float4* K4 = reinterpret_cast<const float4*>(k_cache) + (rows + s0) * G;
        const float4* V4 = reinterpret_cast<const float4*>(v_cache) + (rows + s0) * G;
        float4 qc = reinterpret_cast<const float4*>(qs)[c];
        // 3. scores: group g takes keys g, g + n_groups, ...; every lane of a warp runs the same
        //    number of rounds, so the shuffles below always have all 32 lanes.
        for (int base = 0; base < n; base += n_groups) {
            int j = base + g;
            float v = 0.f;
            if (j < n) { float4 k = K4[(size_t)j * G + c]; v = qc.x * k.x + qc.y * k.y + qc.z * k.z + qc.w * k.w; }
            for (int off = G / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
            if (c == 0 && j < n) scores[j] = v * scale;
        }
        __syncthreads();
        // 4. this part's max and sum of exp
        float m = __int_as_float(0xff800000);                 // -inf
        for (int j = tid; j < n; j += blockDim.x) m = fmaxf(m, scores[j]);
        red[tid] = m;
        __syncthreads();
        for (int k = blockDim.x / 2; k > 0; k >>= 1) {
            if (tid < k) red[tid] = fmaxf(red[tid], red[tid + k]);
            __syncthreads();
        }
        m = red[0];
        __syncthreads();
        float sum = 0.f;
        for (int j = tid; j < n; j += blockDim.x) { float e = expf(scores[j] - m); scores[j] = e; sum += e; }
        red[tid] = sum;
        __syncthreads();
        for (int k = blockDim.x / 2; k > 0; k >>= 1) {
            if (tid < k) red[tid] += red[tid + k];
            __syncthreads();
        }
        if (tid == 0) { pm[o] = m; pl[o] = red[0]; }
        // 5. acc = sum_j exp(score_j - m) v_j: group g sums keys g, g + n_groups, ... for its float4
        //    column c, then the groups' partial sums of each column meet in shared memory.
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int j = g; j < n; j += n_groups) {
            float p = scores[j];
            float4 v = V4[(size_t)j * G + c];
            acc.x += p * v.x; acc.y += p * v.y; acc.z += p * v.z; acc.w += p * v.w;
        }
        __syncthreads();                                      // red[0] has been read
        float4* part4 = reinterpret_cast<float4*>(red);
        part4[tid] = acc;                                     // tid == g * G + c
        __syncthreads();
        if (tid < G) {
            float4 t = part4[tid];
            for (int k = 1; k < n_groups; ++k) {
                float4 u = part4[k * G + tid];
                t.x += u.x; t.y += u.y; t.z += u.z; t.w += u.w;
            }
            reinterpret_cast<float4*>(pacc + o * hd)[tid] = t;
        }
    }

    // 6. count this part done; the last of head h's parts merges them:
    //    out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p, M = max m_p.
    __syncthreads();      // every thread of the block has written its share of pm, pl, pacc
    if (tid == 0) {       // fence, count, fence in one thread, as cooperative groups' grid sync does:
        __threadfence();  // the block's results reach the whole device before it is counted (release),
        last = atomicAdd(done + h, 1) == n_parts - 1;
        __threadfence();  // and the last block sees every other part's after its count (acquire)
    }
    __syncthreads();
    if (!last) return;
    // Other blocks wrote these: read them from L2 (__ldcg), never from a stale L1 line.
    const float* m = pm + (size_t)h * n_parts;
    const float* l = pl + (size_t)h * n_parts;
    float M = __ldcg(m);                                  // part 0 always holds position 0
    for (int p = 1; p < n_parts; ++p) M = fmaxf(M, __ldcg(m + p));
    float L = 0.f;
    for (int p = 0; p < n_parts; ++p) L += __ldcg(l + p) * expf(__ldcg(m + p) - M);
    for (int d = tid; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int p = 0; p < n_parts; ++p)
            a += __ldcg(pacc + ((size_t)h * n_parts + p) * hd + d) * expf(__ldcg(m + p) - M);
        out[(size_t)h * hd + d] = a / L;
    }
    if (tid == 0) done[h] = 0;
}
