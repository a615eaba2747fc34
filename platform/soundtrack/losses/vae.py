"""Training objective of the mel VAE (the latent every generator family diffuses in)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from soundtrack.models.vae import MelVAE, vae_input


def vae_loss(
    vae: MelVAE,
    mel: torch.Tensor,
    kl_weight: float = 1e-4,
    recon: Literal["l1", "l2"] = "l1",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the mel VAE: reconstruction + ``kl_weight`` x KL.

    Definition: with ``x`` the normalised mel and ``x_hat`` the decoding of a sample of
    ``q(z | x)``, ``loss = mean |x - x_hat|^p + kl_weight * KL(q(z|x) || N(0, I)) / n_x``
    where the KL is summed over latent elements and divided by the number of mel elements
    ``n_x`` (so both terms are per mel bin and their ratio does not depend on the clip size).
    ``p = 1`` (``"l1"``, default: AudioLDM's VAE reconstruction term; sharper spectra than
    L2) or ``2``. ``kl_weight = 1e-4`` is our choice: latent-diffusion VAEs use 1e-6 with a
    perceptual and an adversarial term on top; without those (no pretrained perceptual net
    can be downloaded, and a GAN doubles the cost on 2 cores) a somewhat stronger KL keeps
    the latent smooth enough for the diffusion model while reconstruction still dominates.

    Args:
        vae: the model (our :class:`MelVAE`).
        mel: log-mel batch (B, n_mels, T) or (B, 1, n_mels, T), natural-log units.
        kl_weight: weight of the KL term (per mel element, see above).
        recon: ``"l1"`` or ``"l2"``.
        generator: RNG for the posterior sample (reparameterisation).

    Returns:
        ``(loss, stats)`` with stats ``{"recon": ..., "kl": ...}`` as floats (KL per latent
        element).
    """
    x = vae_input(vae, mel)
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=generator)
    x_hat = vae.decode(z).sample
    if recon == "l1":
        rec = (x_hat - x).abs().mean()
    elif recon == "l2":
        rec = F.mse_loss(x_hat, x)
    else:
        raise ValueError(f"recon must be 'l1' or 'l2', got {recon!r}")
    kl_sum = posterior.kl().sum()  # summed over latent dims and batch
    kl_per_x = kl_sum / x.numel()
    loss = rec + kl_weight * kl_per_x
    stats = {"recon": float(rec.detach()), "kl": float(kl_sum.detach() / z.numel())}
    return loss, stats
