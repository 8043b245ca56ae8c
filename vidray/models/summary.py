"""The model table of ``vidray models``: every family's paper, size, cost and input."""

from __future__ import annotations

import torch
from torch import Tensor

from vidray.models.flops import count_macs, count_params
from vidray.models.registry import InputSpec, available, build, entry


def example_input(spec: InputSpec, *, device: str | torch.device = "cpu") -> Tensor | dict:
    """A batch of one clip shaped as the model declares (a dict for flow-reading models)."""
    rgb = torch.zeros(1, 3, spec.frames, spec.crop, spec.crop, device=device)
    if not spec.flow:
        return rgb
    return {"rgb": rgb, "flow": torch.zeros(1, 2 * spec.flow, spec.crop, spec.crop, device=device)}


def model_rows(num_classes: int = 400) -> list[dict[str, object]]:
    """One row per registered family at its default (paper) size.

    Models are built on the meta device: counting needs shapes only, so the
    full-size networks cost neither memory nor compute here.
    """
    rows = []
    for name in available():
        spec = entry(name).input
        with torch.device("meta"):
            model = build(name, num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "paper": entry(name).paper,
                "params_m": count_params(model) / 1e6,
                "gmacs": count_macs(model, example_input(spec, device="meta")) / 1e9,
                "input": f"T={spec.frames} crop={spec.crop}"
                + (f" flow L={spec.flow}" if spec.flow else ""),
            }
        )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    header = f"{'model':<18} {'params (M)':>10} {'GMACs':>8}  {'input':<26} paper"
    lines = [header, "-" * len(header)]
    for r in rows:
        size = f"{r['params_m']:>10.2f} {r['gmacs']:>8.2f}"
        lines.append(f"{r['name']:<18} {size}  {r['input']:<26} {r['paper']}")
    return "\n".join(lines)
