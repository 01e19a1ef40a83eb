# The canonical CUDA configs of tests/it/cuda_offline.rs (every dtype), for the GPU machine's own
# NVRTC + ptxas in scripts/device-check.sh. tests/it/sources.rs checks that they stay equal
# (SPARSECUBE_BLESS=1 rewrites this file from the test's list).

kernel spt_default_f32 {
  op = spt-attention
  direction = forward
  dtype = f32
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_default_f16 {
  op = spt-attention
  direction = forward
  dtype = f16
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_default_bf16 {
  op = spt-attention
  direction = forward
  dtype = bf16
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_variant_f32 {
  op = spt-attention
  direction = forward
  dtype = f32
  pattern = pq-topk(topk = 24, selector = pq-adc, causal = true, clamp = true, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 32)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = false, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_variant_f16 {
  op = spt-attention
  direction = forward
  dtype = f16
  pattern = pq-topk(topk = 24, selector = pq-adc, causal = true, clamp = true, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 32)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = false, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_variant_bf16 {
  op = spt-attention
  direction = forward
  dtype = bf16
  pattern = pq-topk(topk = 24, selector = pq-adc, causal = true, clamp = true, sub_dim = 8, codewords = 16, block = 1)
  dims = (B = 16, H = 32, L = 512, D = 32)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = false, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_blocks_f32 {
  op = spt-attention
  direction = forward
  dtype = f32
  pattern = pq-topk(topk = L/8, selector = pq-adc, causal = true, clamp = false, sub_dim = 8, codewords = 16, block = 64)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_blocks_f16 {
  op = spt-attention
  direction = forward
  dtype = f16
  pattern = pq-topk(topk = L/8, selector = pq-adc, causal = true, clamp = false, sub_dim = 8, codewords = 16, block = 64)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel spt_blocks_bf16 {
  op = spt-attention
  direction = forward
  dtype = bf16
  pattern = pq-topk(topk = L/8, selector = pq-adc, causal = true, clamp = false, sub_dim = 8, codewords = 16, block = 64)
  dims = (B = 16, H = 32, L = 512, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_default_f32 {
  op = routed-ffn
  direction = forward
  dtype = f32
  pattern = routed(blocks = 4, top = 2, router = sigmoid, gate = output, gate_scale = 2, act = relu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_default_f16 {
  op = routed-ffn
  direction = forward
  dtype = f16
  pattern = routed(blocks = 4, top = 2, router = sigmoid, gate = output, gate_scale = 2, act = relu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_default_bf16 {
  op = routed-ffn
  direction = forward
  dtype = bf16
  pattern = routed(blocks = 4, top = 2, router = sigmoid, gate = output, gate_scale = 2, act = relu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_default_tf32 {
  op = routed-ffn
  direction = forward
  dtype = f32
  pattern = routed(blocks = 4, top = 2, router = sigmoid, gate = output, gate_scale = 2, act = relu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel routed_variant_f32 {
  op = routed-ffn
  direction = forward
  dtype = f32
  pattern = routed(blocks = 16, top = 4, router = softmax, gate = spt-lora, gate_scale = 2, act = gelu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_variant_f16 {
  op = routed-ffn
  direction = forward
  dtype = f16
  pattern = routed(blocks = 16, top = 4, router = softmax, gate = spt-lora, gate_scale = 2, act = gelu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_variant_bf16 {
  op = routed-ffn
  direction = forward
  dtype = bf16
  pattern = routed(blocks = 16, top = 4, router = softmax, gate = spt-lora, gate_scale = 2, act = gelu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel routed_variant_tf32 {
  op = routed-ffn
  direction = forward
  dtype = f32
  pattern = routed(blocks = 16, top = 4, router = softmax, gate = spt-lora, gate_scale = 2, act = gelu)
  dims = (T = 8192, d_model = 1024, d_ff = 4096)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel cbm_top16_f32 {
  op = cbm-head
  direction = forward
  dtype = f32
  pattern = cbm(topk = 16)
  dims = (B = 256, C = 512, K = 200)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel cbm_top16_f16 {
  op = cbm-head
  direction = forward
  dtype = f16
  pattern = cbm(topk = 16)
  dims = (B = 256, C = 512, K = 200)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel cbm_top16_bf16 {
  op = cbm-head
  direction = forward
  dtype = bf16
  pattern = cbm(topk = 16)
  dims = (B = 256, C = 512, K = 200)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel cbm_top16_tf32 {
  op = cbm-head
  direction = forward
  dtype = f32
  pattern = cbm(topk = 16)
  dims = (B = 256, C = 512, K = 200)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel dense_linear_f32 {
  op = dense-linear
  direction = forward
  dtype = f32
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_f16 {
  op = dense-linear
  direction = forward
  dtype = f16
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_bf16 {
  op = dense-linear
  direction = forward
  dtype = bf16
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_tf32 {
  op = dense-linear
  direction = forward
  dtype = f32
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel dense_linear_tk32_f32 {
  op = dense-linear
  direction = forward
  dtype = f32
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 32, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_tk32_f16 {
  op = dense-linear
  direction = forward
  dtype = f16
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 32, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_tk32_bf16 {
  op = dense-linear
  direction = forward
  dtype = bf16
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 32, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel dense_linear_tk32_tf32 {
  op = dense-linear
  direction = forward
  dtype = f32
  pattern = dense
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 32, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel nm_2of4_f32 {
  op = nm-linear
  direction = forward
  dtype = f32
  pattern = nm(n = 2, m = 4)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel nm_2of4_f16 {
  op = nm-linear
  direction = forward
  dtype = f16
  pattern = nm(n = 2, m = 4)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel nm_2of4_bf16 {
  op = nm-linear
  direction = forward
  dtype = bf16
  pattern = nm(n = 2, m = 4)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel nm_2of4_tf32 {
  op = nm-linear
  direction = forward
  dtype = f32
  pattern = nm(n = 2, m = 4)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel block_diag_f32 {
  op = block-diag-linear
  direction = forward
  dtype = f32
  pattern = block-diagonal(blocks = 4)
  dims = (N = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel block_diag_f16 {
  op = block-diag-linear
  direction = forward
  dtype = f16
  pattern = block-diagonal(blocks = 4)
  dims = (N = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel block_diag_bf16 {
  op = block-diag-linear
  direction = forward
  dtype = bf16
  pattern = block-diagonal(blocks = 4)
  dims = (N = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel block_diag_tf32 {
  op = block-diag-linear
  direction = forward
  dtype = f32
  pattern = block-diagonal(blocks = 4)
  dims = (N = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel pq_encode_f32 {
  op = pq-encode
  direction = forward
  dtype = f32
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (N = 8192, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel pq_encode_f16 {
  op = pq-encode
  direction = forward
  dtype = f16
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (N = 8192, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel pq_encode_bf16 {
  op = pq-encode
  direction = forward
  dtype = bf16
  pattern = pq-topk(topk = L/8, selector = pq-match, causal = false, clamp = false, sub_dim = 8, codewords = 16, block = 1)
  dims = (N = 8192, D = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel sara_ratio_f32 {
  op = sara-linear
  direction = forward
  dtype = f32
  pattern = sara(ratio = 0.1)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel sara_ratio_f16 {
  op = sara-linear
  direction = forward
  dtype = f16
  pattern = sara(ratio = 0.1)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel sara_ratio_bf16 {
  op = sara-linear
  direction = forward
  dtype = bf16
  pattern = sara(ratio = 0.1)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel sara_ratio_tf32 {
  op = sara-linear
  direction = forward
  dtype = f32
  pattern = sara(ratio = 0.1)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel pst_default_f32 {
  op = pst-linear
  direction = forward
  dtype = f32
  pattern = pst(sparsity = 0.9, rank = 8, mask_rank = 8, alpha1 = 1, alpha2 = 1, beta = 1, s0 = 0, warmup = 0.1, cooldown = 0.3)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel pst_default_f16 {
  op = pst-linear
  direction = forward
  dtype = f16
  pattern = pst(sparsity = 0.9, rank = 8, mask_rank = 8, alpha1 = 1, alpha2 = 1, beta = 1, s0 = 0, warmup = 0.1, cooldown = 0.3)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel pst_default_bf16 {
  op = pst-linear
  direction = forward
  dtype = bf16
  pattern = pst(sparsity = 0.9, rank = 8, mask_rank = 8, alpha1 = 1, alpha2 = 1, beta = 1, s0 = 0, warmup = 0.1, cooldown = 0.3)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel pst_default_tf32 {
  op = pst-linear
  direction = forward
  dtype = f32
  pattern = pst(sparsity = 0.9, rank = 8, mask_rank = 8, alpha1 = 1, alpha2 = 1, beta = 1, s0 = 0, warmup = 0.1, cooldown = 0.3)
  dims = (T = 8192, in = 1024, out = 1024)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel monarch_square_f32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_square_f16 {
  op = monarch
  direction = forward
  dtype = f16
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_square_bf16 {
  op = monarch
  direction = forward
  dtype = bf16
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_square_tf32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel monarch_narrow_f32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 32, tile_n = 128, tile_k = 16, vector = 1, stages = 1, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_narrow_f16 {
  op = monarch
  direction = forward
  dtype = f16
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 32, tile_n = 128, tile_k = 16, vector = 1, stages = 1, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_narrow_bf16 {
  op = monarch
  direction = forward
  dtype = bf16
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 32, tile_n = 128, tile_k = 16, vector = 1, stages = 1, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_narrow_tf32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 4, q = 256, p = 256, l = 4, s = 256, r = 256)
  dims = (N = 8192)
  schedule = (tile_m = 32, tile_n = 128, tile_k = 16, vector = 1, stages = 1, fused = true, lanes = 8, mma = auto, precision = tf32)
}

kernel monarch_rect_f32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 3, q = 64, p = 128, l = 4, s = 40, r = 48)
  dims = (N = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_rect_f16 {
  op = monarch
  direction = forward
  dtype = f16
  pattern = monarch(k = 3, q = 64, p = 128, l = 4, s = 40, r = 48)
  dims = (N = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_rect_bf16 {
  op = monarch
  direction = forward
  dtype = bf16
  pattern = monarch(k = 3, q = 64, p = 128, l = 4, s = 40, r = 48)
  dims = (N = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = ieee)
}

kernel monarch_rect_tf32 {
  op = monarch
  direction = forward
  dtype = f32
  pattern = monarch(k = 3, q = 64, p = 128, l = 4, s = 40, r = 48)
  dims = (N = 64)
  schedule = (tile_m = 64, tile_n = 64, tile_k = 16, vector = 4, stages = 2, fused = true, lanes = 8, mma = auto, precision = tf32)
}
