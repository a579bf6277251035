"""PyTorch SDPA baseline for bench/gpu.sh: the ANCHORS.md attention shapes on
this card, timed like tests/gpu/test_cuda_ops.c --bench (CUDA events around
each call, median of 100 after 20 warm-ups, random normal inputs), for the
default dispatch and each backend PyTorch offers for the shape.
Layout (B, H, L, D) contiguous, as the anchors were taken."""
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [(2, 10, 4096, 64), (2, 20, 1024, 64)]
BACKENDS = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]


def time_ms(fn, warm=20, reps=100):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    e0 = torch.cuda.Event(enable_timing=True)
    e1 = torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(reps):
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    return statistics.median(ts)


def main():
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        for B, H, L, D in SHAPES:
            q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype) for _ in range(3))
            flops = 4.0 * B * H * L * L * D
            for name, be in BACKENDS:
                def run():
                    return F.scaled_dot_product_attention(q, k, v)
                try:
                    if be is None:
                        ms = time_ms(run)
                    else:
                        with sdpa_kernel([be]):
                            ms = time_ms(run)
                except Exception as e:  # a backend that does not take the shape
                    print(f"SDPA {name:9s} {str(dtype)[6:]:8s} B{B} H{H} L{L} D{D}: unavailable ({type(e).__name__})")
                    continue
                print(f"SDPA {name:9s} {str(dtype)[6:]:8s} B{B} H{H} L{L} D{D}: {ms:.4f} ms  "
                      f"{flops / (ms * 1e-3) / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
