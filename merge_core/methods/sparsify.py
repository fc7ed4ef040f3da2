"""Sparsification of task vectors (mergekit 0.1.5 semantics), with masks drawn from a given generator."""

from __future__ import annotations

import torch


def rescale_l1(delta: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `masked` so its L1 norm matches `delta`'s (unchanged when either is ~0)."""
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _apply(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    masked = delta * mask
    return rescale_l1(delta, masked) if rescale else masked


def magnitude(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the max(1, int(density * numel)) largest-magnitude entries (TIES trim); none at density 0."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
    return _apply(delta, mask.reshape_as(delta), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, rescale: bool, gamma: float) -> torch.Tensor:
    """Drop the gamma share of largest entries, then the smallest, keeping `density` (breadcrumbs)."""
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    # fewer outliers are dropped when gamma + density would exceed the whole tensor
    n_bot = max(0, n - target - int(gamma * n))
    order = torch.sort(delta.abs().reshape(-1)).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[n_bot : n_bot + target]] = 1
    return _apply(delta, mask.reshape_as(delta), rescale)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # masks are drawn on the generator's device (CPU) so GPU and CPU builds get the same bits
    return torch.bernoulli(probs.to(generator.device), generator=generator).to(probs.device)


def bernoulli(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability `density` (DARE)."""
    if density >= 1:
        return delta
    return _apply(delta, _draw(torch.full_like(delta, density), generator), rescale)


def della_magprune(
    delta: torch.Tensor, density: float, rescale: bool, epsilon: float, generator: torch.Generator
) -> torch.Tensor:
    """Keep entries with probability rising linearly with their magnitude rank in each row (DELLA)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"density {density} +/- epsilon {epsilon} leaves (0, 1); choose epsilon < min(density, 1 - density)"
        )
    shape = delta.shape
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = torch.argsort(rows.abs(), dim=1).argsort(dim=1).to(torch.float32) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    # a one-column row has hi == lo; mergekit would draw from NaN there
    rank_norm = torch.nan_to_num((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    return _apply(rows, _draw(probs, generator), rescale).reshape(shape)
