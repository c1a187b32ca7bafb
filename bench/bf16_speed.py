"""bfloat16 on the CPU: dlib's face ResNet (the trunk and tops of face-resnet and dlib-face) in float32 against
torch's CPU autocast to bfloat16, channels-last, on the same real 150 px chips; and whether this CPU has native
bfloat16 (AVX512-BF16, AMX) at all.

    python bench/bf16_speed.py --chips data/bench-cpu/cache/chips/train_150_p0.25.npy --n 256
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `bench`; genderfusion comes from the install

from bench._report import emit  # noqa: E402


def cpu_flags() -> list[str]:
    """This CPU's bfloat16 and int8 dot-product flags (from /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted(set(re.findall(r"\b(avx512_bf16|avx512_vnni|avx_vnni|amx_bf16|amx_int8|amx_tile)\b", text)))


def rate(fn, x, batch: int, repeats: int = 2) -> tuple[np.ndarray, float]:
    """Outputs of fn over x in batches, and the best img/s of `repeats` timed passes (after one warm-up batch)."""
    import torch

    with torch.inference_mode():
        fn(x[:batch])
        best, out = 0.0, None
        for _ in range(repeats):
            t = time.perf_counter()
            out = torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])
            best = max(best, len(x) / (time.perf_counter() - t))
    return out.numpy(), best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", required=True, help="a chip cache .npy of uint8 [N, 150, 150, 3] (extract writes one)")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import torch

    from genderfusion.extract.faces.dlib_resnet import load_dlib_resnet
    from genderfusion.extract.faces.face_files import DLIB_NET, dlib_model_paths

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net = load_dlib_resnet(dlib_model_paths()[DLIB_NET]).to(memory_format=torch.channels_last)
    chips = torch.from_numpy(np.array(np.load(args.chips, mmap_mode="r")[: args.n]))
    x = net.normalize(chips).contiguous(memory_format=torch.channels_last)

    def bf16(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(batch)

    ref, fp32 = rate(net, x, args.batch)
    low, bf = rate(bf16, x, args.batch)
    cos = (ref * low).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(low, axis=1))
    return emit({"cpu_flags": cpu_flags(), "threads": torch.get_num_threads(), "images": len(x),
                 "dlib_resnet_float32_img_per_s": round(fp32, 1), "dlib_resnet_bfloat16_img_per_s": round(bf, 1),
                 "bfloat16_vs_float32": round(bf / fp32, 2),
                 "descriptor_max_abs_difference": float(np.abs(ref - low).max()),
                 "descriptor_min_cosine": float(cos.min())}, args.json)


if __name__ == "__main__":
    main()
