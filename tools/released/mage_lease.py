"""Golden fixtures written by the released MAGE (LTH14/mage @ 1becb14) and Sorcen (ImaGonEs/LEASE @ 171b157).

Each writer builds the release's own classes at small widths with seeded random weights, runs them in fp32 on
the CPU and saves, per part, one safetensors file (weights in the release's state-dict layout under
``state/``, inputs under ``input/``, the recorded random draws under ``draw/``, outputs under ``out/``) and a
JSON file with the commit, the sizes and the settings:

    mage_vqgan   MAGE's ``taming.models.vqgan.VQModel``: images -> ids (``encode``) and ids -> images
                 (``quantize.get_codebook_entry`` + ``decode``, the path of ``gen_img_uncond.py``).
    mage         ``models_mage.MaskedGenerativeEncoderViT`` whose ``vqgan`` is the VQGAN above (its
                 ``vqgan.*`` tensors are those of mage_vqgan, not stored twice): ``forward(images)`` with the
                 recorded masking ratio and noise; the encoder output, the code logits and the loss.
    lease        ``models_lease_tk_1600.SorcenViT`` (the released Sorcen): two training forwards, one in the
                 echo warm-up (epoch 3: ground-truth echo) and one after it (epoch 20: sampled echo), with
                 the masking ratio, masking noise, echo draw, window side and window corners recorded; the
                 reconstruction, uniformity and contrastive losses; the teacher after the epoch-20 EMA pull;
                 the gradients of a few tensors after the epoch-20 backward.

What is changed from the released setting, all outside the released files: the 16 x 16 id grid is kept (the
releases hard-code 256 + 1 positions) with a 1 x 1 "patch" on 16 x 16 one-channel "images" for the pixel parts
the token model never uses (``patch_embed``, ``decoder_pred``); dropout probabilities are set to 0 after
construction (a dropout draw cannot be replayed elsewhere); LEASE's projector / predictor / online classifier,
hard-coded at 4096 / 2048 / 512 wide, are replaced by the release's own ``Projector`` at small widths (tens of
MB otherwise); MAGE's VQGAN config is written to a scratch ``config/vqgan.yaml`` (the releases read that path).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

try:
    from env import PINNED, activate
except ImportError:  # imported as tools.released.mage_lease
    from .env import PINNED, activate

SEED = 0
# The small VQGAN (MAGE's layout; GroupNorm is hard-coded to 32 groups, so widths are multiples of 32).
VQGAN = {"embed_dim": 8, "n_embed": 32, "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32,
                                                      "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 1],
                                                      "num_res_blocks": 1, "attn_resolutions": [16],
                                                      "dropout": 0.0}}
# The token transformer (both releases): 16 x 16 ids, K = VQGAN["n_embed"] codes.
VIT = {"embed_dim": 16, "depth": 2, "num_heads": 2, "decoder_embed_dim": 8, "decoder_depth": 2,
       "decoder_num_heads": 2, "mlp_ratio": 4.0, "img_size": 16, "patch_size": 1, "in_chans": 1}
# LEASE's heads at small widths: (in, hidden, out) of projector / momentum_projector / predictor.
PROJ, PRED, CLASSIFIER_HIDDEN = (16, 32, 12), (12, 24, 12), 8
LEASE_EPOCHS = (3, 20)  # one forward in the echo warm-up (epoch <= 10) and one after it
GRAD_KEYS = ("blocks.0.attn.qkv.weight", "norm.weight", "decoder_blocks.1.mlp.fc2.weight", "mlm_layer.fc.weight",
             "token_emb.position_embeddings.weight", "decoder_pos_embed_learned", "projector.projector.0.weight",
             "predictor.projector.3.weight", "momentum_projector.projector.0.weight")
BATCH = 4


# ---------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _vqgan_yaml() -> Iterator[None]:
    """Run with a scratch working directory holding ``config/vqgan.yaml`` = :data:`VQGAN` (both releases
    read that relative path in their constructors)."""
    from omegaconf import OmegaConf

    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config").mkdir()
        OmegaConf.save({"model": {"target": "taming.models.vqgan.VQModel", "params": VQGAN}},
                       Path(tmp) / "config" / "vqgan.yaml")
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter drawn from ``gen``: embedding and position tables ~ N(0, 0.5^2), biases ~ N(0, 0.1^2),
    matrices and convolutions ~ N(0, 1/fan_in), other vectors (norm gains) ~ 1 + N(0, 0.2^2)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "embeddings" in name or "pos_embed" in name or name in ("cls_token", "mask_token"):
                p.copy_(0.5 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(1 + 0.2 * noise)


def _no_dropout(module: nn.Module) -> None:
    """Dropout probabilities to 0 (nn.Dropout modules and FlashAttentionLayer's ``attn_drop_prob``)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attn_drop_prob"):
            m.attn_drop_prob = 0.0


class _RatioRecorder:
    """Stands in for the release's ``mask_ratio_generator`` (a scipy truncnorm): draws with it, records."""

    def __init__(self, dist: Any) -> None:
        self.dist, self.draws = dist, []

    def rvs(self, *args: Any, **kwargs: Any) -> np.ndarray:
        out = self.dist.rvs(*args, **kwargs)
        self.draws.append(float(out[0]))
        return out


@contextlib.contextmanager
def _record_torch_rand(draws: list[torch.Tensor]) -> Iterator[None]:
    """Record every ``torch.rand`` draw (the releases' masking noise) while inside."""
    original = torch.rand

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    torch.rand = recording  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.rand = original  # type: ignore[assignment]


def _wrap(obj: Any, name: str, after: Callable[..., Any]) -> None:
    """Replace the bound method ``obj.name`` by one that calls it and hands (result, args) to ``after``."""
    original = getattr(obj, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        after(out, *args, **kwargs)
        return out

    setattr(obj, name, wrapped)


def _save(out_dir: Path, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> list[Path]:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    st, js = out_dir / f"{stem}.safetensors", out_dir / f"{stem}.json"
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(st))
    meta = {**meta, "torch": torch.__version__, "seed": SEED,
            "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sorted(tensors.items())}}
    js.write_text(json.dumps(meta, indent=1) + "\n")
    return [st, js]


def _state(prefix: str, module: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in module.state_dict().items() if not k.startswith(skip)}


def _released_functions(script: str, *names: str) -> dict[str, Any]:
    """Top-level functions of a released *script* (its module body runs a whole job at import: argparse, a
    ViT-B, a checkpoint), compiled from the unmodified file, without running the rest of the body."""
    import ast
    import math
    import sys

    path = next(Path(p) / script for p in sys.path if (Path(p) / script).is_file())
    tree = ast.parse(path.read_text(), str(path))
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {node.name for node in body} == set(names), f"{script}: {names} not all found"
    namespace: dict[str, Any] = {"torch": torch, "np": np, "math": math}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


# ---------------------------------------------------------------------------------------------- VQGAN
def _images(gen: torch.Generator) -> torch.Tensor:
    """(BATCH, 3, 32, 32) in [0, 1]: a smooth random field plus pixel noise (ids vary over the grid)."""
    coarse = torch.rand(BATCH, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return (0.7 * smooth + 0.3 * torch.rand(BATCH, 3, 32, 32, generator=gen)).clamp(0, 1)


def _build_vqgan(gen: torch.Generator, images: torch.Tensor) -> nn.Module:
    """The released VQModel with drawn weights; the codebook is drawn around the encoder's outputs for
    ``images`` (so the ids use many codes, with clear margins)."""
    from taming.models.vqgan import VQModel

    vq = VQModel(ddconfig=VQGAN["ddconfig"], n_embed=VQGAN["n_embed"], embed_dim=VQGAN["embed_dim"],
                 ckpt_path=None).eval()
    _randomise(vq, gen)
    with torch.no_grad():
        z = vq.encoder(images).permute(0, 2, 3, 1).reshape(-1, VQGAN["embed_dim"])  # (B*h*w, D)
        pick = torch.randperm(z.shape[0], generator=gen)[: VQGAN["n_embed"]]
        vq.quantize.embedding.weight.copy_(z[pick] + 0.05 * z.std() * torch.randn(pick.shape[0], z.shape[1],
                                                                                 generator=gen))
    return vq


def _id_margin(vq: nn.Module, images: torch.Tensor) -> float:
    """Smallest gap between the nearest and second-nearest code distance over all positions (robustness)."""
    with torch.no_grad():
        z = vq.encoder(images).permute(0, 2, 3, 1).reshape(-1, VQGAN["embed_dim"])
        d = torch.cdist(z.double(), vq.quantize.embedding.weight.double()).pow(2)  # (N, K)
        two = d.topk(2, dim=1, largest=False).values
    return float((two[:, 1] - two[:, 0]).min())


def write_vqgan(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """mage_vqgan.safetensors: VQModel state dict, images, ids, decodes (of the ids and of random ids)."""
    activate("mage", root)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    images = _images(gen)
    with _vqgan_yaml():
        vq = _build_vqgan(gen, images)
    b, k, g = BATCH, VQGAN["n_embed"], 16
    with torch.no_grad():
        _z_q, _loss, (_perp, _enc, idx) = vq.encode(images)
        ids = idx.reshape(b, g, g)
        random_ids = torch.randint(0, k, (b, g, g), generator=gen)
        decoded = {}
        for name, code in (("ids", ids), ("random_ids", random_ids)):  # gen_img_uncond.py's decoding path
            z_q = vq.quantize.get_codebook_entry(code.reshape(-1), shape=(b, g, g, VQGAN["embed_dim"]))
            decoded[name] = vq.decode(z_q)
    tensors = {**_state("state/", vq), "input/images": images, "input/random_ids": random_ids,
               "out/ids": ids, "out/decoded": decoded["ids"], "out/decoded_random": decoded["random_ids"]}
    meta = {"release": "LTH14/mage", "commit": PINNED["mage"], "part": "mage_vqgan",
            "code": "taming/models/vqgan.py VQModel: encode; quantize.get_codebook_entry + decode",
            "config": VQGAN, "batch": b, "distinct_ids": int(ids.unique().numel()),
            "min_distance_margin": _id_margin(vq, images),
            "notes": "state/ is VQModel.state_dict() (the 'vqgan.' sub-tree of models_mage); decoded images "
                     "are the raw decoder output (no clamp)"}
    return _save(Path(out_dir), "mage_vqgan", tensors, meta)


# ---------------------------------------------------------------------------------------------- MAGE
def write_mage(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """mage.safetensors: MaskedGenerativeEncoderViT (without its vqgan.* = mage_vqgan) and one forward."""
    activate("mage", root)
    import models_mage

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    images = _images(gen)
    with _vqgan_yaml():
        vq = _build_vqgan(gen, images)  # the same draws as write_vqgan: the same VQGAN
        model = models_mage.MaskedGenerativeEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                                       vqgan_ckpt_path=None, **VIT)
    vq_state = vq.state_dict()
    _randomise(model, torch.Generator().manual_seed(SEED + 1))
    model.vqgan.load_state_dict(vq_state)
    model.eval()  # MAGE has no batch norm: eval only switches dropout off

    rec: dict[str, Any] = {}
    ratio = _RatioRecorder(model.mask_ratio_generator)
    model.mask_ratio_generator = ratio
    noise: list[torch.Tensor] = []
    encoder = model.forward_encoder

    def forward_encoder(x: torch.Tensor) -> Any:
        with _record_torch_rand(noise):
            out = encoder(x)
        rec["encoder"] = out
        return out

    model.forward_encoder = forward_encoder
    _wrap(model, "forward_decoder", lambda out, *a: rec.__setitem__("logits", out))
    with torch.no_grad():
        loss, _, _ = model(images)
    out_logits = rec["logits"][:, 1:, :model.codebook_size]
    latent, gt_indices, drop_mask, all_mask = rec["encoder"]
    assert len(noise) == 1 and len(ratio.draws) == 1, "expected one masking draw"
    k = model.codebook_size
    # gen_img_uncond.gen_image's first step: the whole map [MASK], nothing dropped (the MaskGIT path). Its
    # code after the loop hard-codes MAGE's 1024 codes of 256 dims and fails at this size; the logits of the
    # step are recorded before that.
    rec.pop("logits")
    with torch.no_grad(), contextlib.suppress(RuntimeError, IndexError):
        _released_functions("gen_img_uncond.py", "gen_image", "mask_by_random_topk")["gen_image"](
            model, BATCH, SEED, num_iter=1)
    generation_logits = rec["logits"][:, 1:, :k]
    tensors = {**_state("state/", model, skip=("vqgan.",)), "input/images": images,
               "draw/mask_ratio": torch.tensor(ratio.draws[0], dtype=torch.float64), "draw/noise": noise[0],
               "out/ids": gt_indices, "out/token_all_mask": all_mask[:, 1:].bool(),
               "out/token_drop_mask": drop_mask[:, 1:].bool(), "out/latent": latent,
               "out/code_logits": out_logits, "out/loss": loss.reshape(()),
               "out/generation_step0_code_logits": generation_logits}
    meta = {"release": "LTH14/mage", "commit": PINNED["mage"], "part": "mage",
            "code": "models_mage.py MaskedGenerativeEncoderViT.forward (eval: no dropout)",
            "vit": VIT, "vqgan": VQGAN, "codebook_size": k, "fake_class_label": model.fake_class_label,
            "mask_token_label": model.mask_token_label, "batch": BATCH, "norm_layer": "LayerNorm(eps=1e-6)",
            "notes": "state/ omits the 'vqgan.' sub-tree: it is mage_vqgan.safetensors' state/. "
                     "out/code_logits = forward_decoder(...)[:, 1:, :codebook_size]; out/latent = the encoder "
                     "output (class slot + kept tokens); masks exclude the class slot; "
                     "out/generation_step0_code_logits: gen_img_uncond.gen_image's first step (all [MASK], "
                     "nothing dropped)"}
    return _save(Path(out_dir), "mage", tensors, meta)


# ---------------------------------------------------------------------------------------------- LEASE
def _corners(windowed: torch.Tensor, side: int, mask_label: int) -> torch.Tensor:
    """(B, 2) top-left corners of the kept window in ``windowed`` (B, 16, 16); checked to reproduce it."""
    inside = windowed != mask_label  # echo / ground-truth ids are codes, never the [MASK] label
    rows = inside.any(dim=2).float().argmax(dim=1)
    cols = inside.any(dim=1).float().argmax(dim=1)
    corners = torch.stack([rows, cols], dim=1)
    for i, (r, c) in enumerate(corners.tolist()):
        box = torch.zeros_like(inside[i])
        box[r:r + side, c:c + side] = True
        assert torch.equal(box, inside[i]), "window corners do not reproduce the released window"
    return corners


def write_lease(out_dir: str | Path, root: str | None = None) -> list[Path]:
    """lease.safetensors: SorcenViT weights (as used by the epoch-3 forward), both runs' draws and losses."""
    activate("LEASE", root)
    import models_lease_tk_1600 as lease
    import torch.distributed as dist

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    with _vqgan_yaml():
        model = lease.SorcenViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **VIT)
    model.projector = lease.Projector(*PROJ)
    model.momentum_projector = lease.Projector(*PROJ)
    model.predictor = lease.Projector(*PRED)
    model.classifier = nn.Sequential(nn.Linear(VIT["embed_dim"], CLASSIFIER_HIDDEN), nn.ReLU(),
                                     nn.Linear(CLASSIFIER_HIDDEN, 1000))
    _randomise(model, torch.Generator().manual_seed(SEED + 2))
    _no_dropout(model)
    model.train()
    k = model.codebook_size
    ids = torch.randint(0, k, (BATCH, 16, 16), generator=torch.Generator().manual_seed(SEED + 3))

    if not dist.is_initialized():  # nnclr_loss_func asks for the rank
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    ratio = _RatioRecorder(model.mask_ratio_generator)
    model.mask_ratio_generator = ratio
    rec: dict[str, Any] = {}
    noise: list[torch.Tensor] = []
    encoder = model.forward_encoder

    def forward_encoder(*args: Any) -> Any:
        with _record_torch_rand(noise):
            out = encoder(*args)
        rec["masks"] = out[3:5]
        return out

    model.forward_encoder = forward_encoder
    _wrap(model, "forward_loss", lambda out, *a: rec.__setitem__("recon", out))
    _wrap(model, "uniformity_loss", lambda out, *a: rec.__setitem__("uniformity", out))
    _wrap(model, "nnclr_loss_func", lambda out, *a, **kw: rec.__setitem__("contrast", out))
    _wrap(model, "mask_random_square", lambda out, seq, label, side: rec.update(window=out, side=side))
    sampler = model.top_k_categorical_exclude_max

    def top_k_categorical_exclude_max(logits: torch.Tensor, k: int = 15) -> Any:
        distribution = sampler(logits, k=k)
        draw = distribution.sample

        def sample(*args: Any) -> torch.Tensor:
            out = draw(*args)
            rec["echo_draw"] = out.clone()
            rec["echo_probs"] = distribution.probs[0].detach().clone()  # (256, K) of the first sample
            return out

        distribution.sample = sample
        rec["echo_k"] = k
        return distribution

    model.top_k_categorical_exclude_max = top_k_categorical_exclude_max
    _wrap(model, "update_ema", lambda out, epoch: rec.__setitem__(
        "after_ema", {n: v.detach().clone() for n, v in model.state_dict().items()}))

    tensors: dict[str, torch.Tensor] = {"input/ids": ids}
    for run, epoch in enumerate(LEASE_EPOCHS):
        noise.clear()
        ratio.draws.clear()
        model.zero_grad(set_to_none=True)
        total, rec_loss, nn_loss, *_ = model(ids.clone(), None, epoch)  # forward masks vq_idx in place
        if run == 0:  # the weights this forward used (after its EMA pull)
            tensors.update({f"state/{n}": v for n, v in rec["after_ema"].items()})
        else:  # the teacher after this run's EMA pull, and the gradients of the total loss
            tensors.update({f"teacher_after/{n}": v for n, v in rec["after_ema"].items()
                            if n.startswith(("blocks_momentum.", "momentum_projector.")) and v.is_floating_point()
                            and not n.endswith(("running_mean", "running_var"))})
            total.backward()
            params = dict(model.named_parameters())
            tensors.update({f"grad/{n}": params[n].grad for n in GRAD_KEYS})
        assert len(noise) == 1 and len(ratio.draws) == 1, "expected one masking draw per forward"
        drop_mask, all_mask = rec["masks"]  # forward_encoder returns (x, 0, gt, drop, all)
        p = f"run{run}/"
        tensors.update({
            p + "epoch": torch.tensor(epoch), p + "mask_ratio": torch.tensor(ratio.draws[0], dtype=torch.float64),
            p + "noise": noise[0], p + "token_all_mask": all_mask[:, 1:].bool(),
            p + "token_drop_mask": drop_mask[:, 1:].bool(), p + "echo_draw": rec["echo_draw"],
            p + "window_side": torch.tensor(int(rec["side"])),
            p + "window_corners": _corners(rec["window"], int(rec["side"]), model.mask_token_label),
            p + "teacher_input": rec["window"].reshape(BATCH, -1), p + "echo_probs_sample0": rec["echo_probs"],
            p + "recon": rec["recon"].reshape(()), p + "uniformity_x0.01": rec["uniformity"].reshape(()),
            p + "contrast": rec["contrast"].reshape(()), p + "rec_loss": rec_loss.reshape(()),
            p + "nn_loss": nn_loss.reshape(()), p + "total": total.detach().reshape(())})
    dist.destroy_process_group()
    tensors.update(_linear_probe_features({n[len("state/"):]: v for n, v in tensors.items()
                                           if n.startswith("state/")}))
    # main_pretrain_tk_1600.py's optimizer groups: timm's add_weight_decay over the model
    from timm.optim.optim_factory import add_weight_decay

    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_group, decay_group = add_weight_decay(model, 0.05)
    # the masking ratio's law: the release's own truncnorm object, its quantile function at the uniforms
    # torch.Generator().manual_seed(i) draws first (float64), i < 8
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                     for i in range(8)])
    tensors.update({"mask_ratio_law/u": u,
                    "mask_ratio_law/ppf": torch.from_numpy(ratio.dist.ppf(u.numpy())).to(torch.float64)})
    meta = {"weight_decay_groups": {"no_decay": sorted(names[id(p)] for p in no_decay_group["params"]),
                                    "decay": sorted(names[id(p)] for p in decay_group["params"])},
            "release": "ImaGonEs/LEASE", "commit": PINNED["LEASE"], "part": "lease",
            "code": "models_lease_tk_1600.py SorcenViT.forward(vq_idx, None, epoch), train mode, dropout 0",
            "vit": VIT, "codebook_size": k, "fake_class_label": model.fake_class_label,
            "mask_token_label": model.mask_token_label, "batch": BATCH, "epochs": list(LEASE_EPOCHS),
            "projector": list(PROJ), "predictor": list(PRED), "echo_top_k": rec["echo_k"],
            "norm_layer": "LayerNorm(eps=1e-6)", "ema": "beta = 1 - 0.004 * (cos(pi * epoch / 1600) + 1) / 2",
            "notes": "state/ = the state dict after run 0's EMA pull (what run 0 computed with; run 1 starts "
                     "from it, pulls the teacher (teacher_after/) and computes with that). runN/echo_draw is "
                     "the release's Categorical draw over (B, 256) (used when epoch > 10); teacher_input is "
                     "the windowed echo ids fed to the teacher (release vocabulary); uniformity_x0.01 is "
                     "uniformity_loss()'s value (x 0.01 included); contrast is nnclr_loss_func's value "
                     "(before x 0.1); grad/ after run 1's total.backward(); echo_probs_sample0: the first sample's "
                     "Categorical probabilities; mask_ratio_law/ppf: mask_ratio_generator.ppf(u); "
                     "weight_decay_groups: timm add_weight_decay(model) as main_pretrain_tk_1600.py calls it; "
                     "probe/features: main_linprobe.py's VisionTransformerMage(global_pool=True).forward_features "
                     "with state/ loaded, on mage_vqgan's input/images (probe/ids: their VQGAN ids)"}
    return _save(Path(out_dir), "lease", tensors, meta)


def _linear_probe_features(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """main_linprobe.py's features: ``models_vit.VisionTransformerMage(global_pool=True)`` loads the pretrained
    state dict (``interpolate_pos_embed``, ``strict=False``; its ``fc_norm`` stays at its init) and its
    ``forward_features`` tokenizes the images with the VQGAN (mage_vqgan's: same draws) and pools."""
    import models_vit
    from util.pos_embed import interpolate_pos_embed

    gen = torch.Generator().manual_seed(SEED)
    images = _images(gen)  # mage_vqgan's input/images
    with _vqgan_yaml():
        vq = _build_vqgan(gen, images)
        probe = models_vit.VisionTransformerMage(global_pool=True, vqgan_ckpt_path=None, num_classes=10,
                                                 img_size=VIT["img_size"], patch_size=VIT["patch_size"],
                                                 in_chans=VIT["in_chans"], embed_dim=VIT["embed_dim"],
                                                 depth=VIT["depth"], num_heads=VIT["num_heads"],
                                                 mlp_ratio=VIT["mlp_ratio"], qkv_bias=True,
                                                 norm_layer=partial(nn.LayerNorm, eps=1e-6))
    checkpoint = dict(state)
    interpolate_pos_embed(probe, checkpoint)
    missing = probe.load_state_dict(checkpoint, strict=False).missing_keys
    assert {k.split(".")[0] for k in missing} == {"fc_norm", "head", "vqgan"}, missing
    probe.vqgan.load_state_dict(vq.state_dict())
    probe.eval()
    with torch.no_grad():
        ids = probe.vqgan.encode(images)[2][2].reshape(images.shape[0], -1)
        features = probe.forward_features(images)
    return {"probe/ids": ids, "probe/features": features}


WRITERS: dict[str, Callable[..., list[Path]]] = {"vqgan": write_vqgan, "mage": write_mage, "lease": write_lease}
