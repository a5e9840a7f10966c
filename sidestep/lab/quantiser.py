"""Learned codes for the rec lab: a residual-quantised autoencoder (RQ-VAE, semantic IDs in the TIGER / LC-Rec
sense) over item text embeddings, trained with a straight-through estimator and a commitment loss.

Two straight-through paths, both written once here:

- ``straight_through(z, q)``: the quantised latent in the forward pass, the identity to the encoder in the
  backward pass (van den Oord et al. 2017); the decoder's reconstruction loss reaches the encoder this way.
- ``RQCodes.forward`` returns, per level, a straight-through one-hot of the code: the hard one-hot forward,
  the gradient of softmax(-distance / tau) backward. A lookup table read through it is the exact lookup of the
  hard code, and the sequence model's loss reaches the encoder and the codebooks through the assignment.

``commitment_loss(z, q, beta) = beta * |z - sg(q)|^2 + |sg(z) - q|^2`` (means over elements): the first term
pulls the encoder to its codeword, the second the codeword to the encoder output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["RQCodes", "RQOutput", "commitment_loss", "straight_through", "straight_through_onehot"]


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q in the forward pass; d out / d z = identity, d out / d q = 0 in the backward pass."""
    return z + (q - z).detach()


def commitment_loss(z: torch.Tensor, q: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """beta * mean((z - sg(q))^2) + mean((sg(z) - q)^2): the commitment and codebook terms of VQ-VAE."""
    return beta * F.mse_loss(z, q.detach()) + F.mse_loss(z.detach(), q)


def straight_through_onehot(dist: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, one-hot): argmin of ``dist`` (..., K); the one-hot is hard forward, softmax(-dist / tau) backward."""
    idx = dist.argmin(-1)
    hard = F.one_hot(idx, dist.shape[-1]).to(dist.dtype)
    soft = torch.softmax(-dist / tau, dim=-1)
    return idx, hard + soft - soft.detach()


@dataclass
class RQOutput:
    codes: torch.Tensor  # (N, L) long
    onehot: torch.Tensor  # (N, L, K) straight-through one-hots
    recon: torch.Tensor  # scalar: reconstruction MSE of the text vectors
    commit: torch.Tensor  # scalar: commitment + codebook loss summed over levels


class RQCodes(nn.Module):
    """Encoder MLP -> L levels of residual quantisation with K codewords each -> decoder MLP."""

    def __init__(self, dim: int, levels: int = 8, codewords: int = 64, latent: int = 32, hidden: int = 128,
                 beta: float = 0.25):
        super().__init__()
        self.levels, self.codewords, self.beta = levels, codewords, beta
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.codebooks = nn.Parameter(torch.randn(levels, codewords, latent) * 0.1)

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Each level's codewords start at residuals of random items (no codeword starts dead)."""
        r = self.encoder(x)
        for level in range(self.levels):
            pick = torch.randperm(len(r), generator=generator)[: self.codewords]
            if len(pick) < self.codewords:
                pick = torch.randint(len(r), (self.codewords,), generator=generator)
            self.codebooks[level] = r[pick]
            idx = torch.cdist(r, self.codebooks[level]).argmin(-1)
            r = r - self.codebooks[level][idx]

    def forward(self, x: torch.Tensor, tau: float = 1.0) -> RQOutput:
        z = self.encoder(x)
        r = z
        codes, onehots, quantised = [], [], torch.zeros_like(z)
        commit = z.new_zeros(())
        for level in range(self.levels):
            book = self.codebooks[level]
            dist = (r.unsqueeze(1) - book.unsqueeze(0)).square().sum(-1)  # (N, K)
            idx, onehot = straight_through_onehot(dist, tau)
            q = book[idx]
            commit = commit + commitment_loss(r, q, self.beta)
            quantised = quantised + q
            r = r - q.detach()
            codes.append(idx)
            onehots.append(onehot)
        recon = F.mse_loss(self.decoder(straight_through(z, quantised)), x)
        return RQOutput(torch.stack(codes, 1), torch.stack(onehots, 1), recon, commit)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) hard codes of text vectors x (what a frozen quantiser assigns)."""
        return self.forward(x).codes


def pretrain_quantiser(model: RQCodes, x: torch.Tensor, steps: int, lr: float = 1e-3, batch: int = 1024,
                       generator: torch.Generator | None = None) -> float:
    """Reconstruction + commitment only (before the sequence objective), like fitting OPQ before the tables;
    returns the last reconstruction MSE relative to the mean squared norm."""
    model.init_codebooks(x, generator)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        rows = torch.randint(len(x), (min(batch, len(x)),), generator=generator)
        out = model(x[rows])
        loss = out.recon + out.commit
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(model(x).recon / x.square().mean().clamp_min(1e-12))
