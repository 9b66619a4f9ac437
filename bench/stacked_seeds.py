"""How much one GPU gains by training K independent ResNet-32 models as one vmapped model.

A probe for issue 6's table target (3 seeds of every method in 30 GPU-minutes): at batch 128 a CE step
is bound by its kernels' fixed costs, so K seeds stacked with ``torch.func.vmap`` (each convolution
becomes one grouped convolution over the K models) may cost far less than K steps. The models are
independent: each has its own weights, batch-norm statistics, batch and SGD state, and the summed loss
gives each model exactly its own gradient.

For K in ``--ks`` the script times, as one replayed CUDA graph (forward, backward, SGD with momentum and
weight decay), the step of K separate models one after another and the step of the K models vmapped,
and reports milliseconds per model-step. Before timing, it checks in float64 that vmapped steps of two
models equal the same steps of each model alone (weights, batch-norm buffers, momenta) and stops if
they differ by more than ``TOLERANCE``.

    python bench/stacked_seeds.py [--ks 1,2,4,8] [--precision 32|bf16] [--channels-last] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from lt_bench.models.resnet_cifar import resnet32
from lt_bench.reports.provenance import git_state

BATCH, CLASSES, LR, MOMENTUM, WEIGHT_DECAY = 128, 10, 0.1, 0.9, 2e-4
#: largest difference the equality check (float64) accepts
TOLERANCE = 1e-10


def classifier(seed: int) -> nn.Module:
    """ResNet-32 with a linear head, initialised from ``seed``."""
    torch.manual_seed(seed)
    backbone = resnet32()
    return nn.Sequential(backbone, nn.Linear(backbone.feature_dim, CLASSES))


def sgd_step(params: list[Tensor], buffers: list[Tensor]) -> None:
    """SGD with momentum and weight decay (torch's update, dampening 0), foreach over ``params``."""
    with torch.no_grad():
        grads = torch._foreach_add([p.grad for p in params], params, alpha=WEIGHT_DECAY)
        torch._foreach_mul_(buffers, MOMENTUM)
        torch._foreach_add_(buffers, grads)
        torch._foreach_add_(params, buffers, alpha=-LR)


def separate_step(
    models: list[nn.Module],
    momenta: list[list[Tensor]],
    autocast: bool,
    fmt: torch.memory_format = torch.contiguous_format,
) -> Callable:
    """One step of each model in turn on its own batch: ``step(images [K,B,C,H,W], targets [K,B])``,
    each batch copied into ``fmt`` first (as the fast engine does for channels_last)."""

    def step(images: Tensor, targets: Tensor) -> None:
        for k, model in enumerate(models):
            params = list(model.parameters())
            for p in params:
                p.grad = None
            x = images[k].contiguous(memory_format=fmt)
            with torch.autocast(images.device.type, torch.bfloat16, enabled=autocast, cache_enabled=False):
                loss = F.cross_entropy(model(x).float(), targets[k])
            loss.backward()
            sgd_step(params, momenta[k])

    return step


def stacked_step(models: list[nn.Module], autocast: bool) -> tuple[Callable, dict, dict, list[Tensor]]:
    """The K models as one: weights and buffers stacked on a leading axis (contiguous, whatever the
    models' memory format), the forward vmapped over it."""
    params, buffers = stack_module_state(models)
    params = {k: v.detach().contiguous().requires_grad_() for k, v in params.items()}
    buffers = {k: v.contiguous() for k, v in buffers.items()}
    template = copy.deepcopy(models[0]).to("meta")
    momenta = [torch.zeros_like(p) for p in params.values()]

    def forward(p: dict, b: dict, x: Tensor) -> Tensor:
        return functional_call(template, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, 0))

    def step(images: Tensor, targets: Tensor) -> None:
        for p in params.values():
            p.grad = None
        with torch.autocast(images.device.type, torch.bfloat16, enabled=autocast, cache_enabled=False):
            logits = batched(params, buffers, images).float()  # [K, B, classes]
        # summed over models: each model's gradient is that of its own mean loss
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / targets.shape[1]
        loss.backward()
        sgd_step(list(params.values()), momenta)

    return step, params, buffers, momenta


def check_equal(device: torch.device, steps: int = 3) -> float:
    """Largest difference of any weight, batch-norm buffer or momentum after one vmapped step of two
    models against the same step of each model alone, over ``steps`` steps (float64, batch 16: in fp32
    the two orders of summation differ by 1e-3 within three steps on random data at this learning rate).
    After each step the separate models take the vmapped ones' state, so differences do not accumulate."""
    k = 2
    models = [classifier(s).to(device, torch.float64) for s in range(k)]
    reference = [copy.deepcopy(m) for m in models]
    momenta = [[torch.zeros_like(p) for p in m.parameters()] for m in reference]
    stacked, params, buffers, stacked_momenta = stacked_step(models, autocast=False)
    separate = separate_step(reference, momenta, False)
    worst = 0.0
    for _ in range(steps):
        images = torch.randn(k, 16, 3, 32, 32, device=device, dtype=torch.float64)
        targets = torch.randint(0, CLASSES, (k, 16), device=device)
        stacked(images, targets)
        separate(images, targets)
        with torch.no_grad():
            for i, model in enumerate(reference):
                state = model.state_dict()
                pairs = [(state[name], stack[i]) for name, stack in {**params, **buffers}.items()]
                pairs += list(zip(momenta[i], (m[i] for m in stacked_momenta), strict=True))
                for own, stack in pairs:
                    worst = max(worst, (own.double() - stack.double()).abs().max().item())
                    own.copy_(stack)
    return worst


def time_step(step: Callable, images: Tensor, targets: Tensor, steps: int) -> float:
    """Milliseconds per call of ``step``: warm-up on a side stream, then a captured graph replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(images, targets)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(images, targets)
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument(
        "--channels-last", action="store_true", help="the separate models (vmapped ones stay contiguous)"
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    difference = check_equal(device)
    print(
        "vmapped against separate steps (float64), largest weight, buffer or momentum difference: "
        f"{difference:.2e}"
    )
    if difference > TOLERANCE:
        raise SystemExit(
            f"the vmapped models differ from the separate ones by {difference:.2e} > {TOLERANCE}"
        )
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    autocast = args.precision == "bf16"
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        images = torch.randn(k, BATCH, 3, 32, 32, device=device)
        targets = torch.randint(0, CLASSES, (k, BATCH), device=device)
        models = [classifier(s).to(device, memory_format=fmt) for s in range(k)]
        momenta = [[torch.zeros_like(p) for p in m.parameters()] for m in models]
        separate = time_step(separate_step(models, momenta, autocast, fmt), images, targets, args.steps)
        stacked = time_step(stacked_step(models, autocast)[0], images, targets, args.steps)
        row = {"k": k, "separate_ms_per_model": separate / k, "stacked_ms_per_model": stacked / k}
        rows.append(row)
        print(
            f"K={k}: separate {separate:.3f} ms per step ({separate / k:.3f} per model), vmapped "
            f"{stacked:.3f} ms ({stacked / k:.3f} per model); gain {separate / stacked:.2f}x",
            flush=True,
        )
    if args.json:
        settings = {
            "ks": args.ks,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "steps": args.steps,
            "git": git_state(),
        }
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **settings}
        args.json.write_text(json.dumps({**meta, "check_difference": difference, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
