"""Smoke test of the multi-modal, multi-label pieces assembled by hand (the recipe part 2 wires into the trainer).

Three sites on the synthetic S2/S1 scenes: site-1 holds S2, site-2 S1, site-3 both (paired, so MIM acts there).
Each site extracts features with the real tiny CLIP (random weights) through its modality's composite, fits FW on
its own training features, and trains one shared prompt, the adapters of its modalities and its own sigmoid bias
with the multi-label loss (+ MIM at site-3). The server averages with `group_average` (MF). The loss falls and
the pooled test F1 rises over rounds; the missing-modality rows evaluate S1-only and S2-only test sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import tiny_config
from fedrsclip.adapters import ModalityAdapters, group_average
from fedrsclip.algorithms import SHARED
from fedrsclip.data import list_dataset
from fedrsclip.data.composite import image_settings
from fedrsclip.data.manifest import site_split
from fedrsclip.data.multimodal import build_mm_manifest, paired_split, site_modalities
from fedrsclip.data.synth_mm import make_synthetic_mm
from fedrsclip.features import FeatureSet, extract_features
from fedrsclip.mim import inactive_reason, info_nce, paired_rows
from fedrsclip.multilabel import BIAS_LR, SigmoidCalibration, metrics_by_site, multilabel_loss
from fedrsclip.multimodal import evaluate_modality, prepare
from fedrsclip.prompts import PromptLearner
from fedrsclip.whitening import fit_whitening, whiten

ROUNDS, STEPS, BATCH = 5, 10, 16


def _features(backbone, manifest, site, split, modality, paths=None) -> FeatureSet:
    items = site_split(manifest, site, split, multi_label=True)
    if paths is not None:  # the partner patches of the same scenes, same labels
        items = [(p, labels) for p, (_, labels) in zip(paths, items)]
    return extract_features(
        backbone, items, progress=False, image=image_settings(modality), num_classes=len(manifest["classes"])
    )


class _Site:
    def __init__(self, name, manifest, backbone, cfg):
        self.name, self.modalities = name, site_modalities(manifest, name)
        self.train, self.test, self.fw = {}, {}, {}
        for split, store in (("train", self.train), ("test", self.test)):
            store[self.modalities[0]] = _features(backbone, manifest, name, split, self.modalities[0])
            for partner in self.modalities[1:]:
                pairs = paired_split(manifest, name, split, partner)
                store[partner] = _features(backbone, manifest, name, split, partner, [b for _, b in pairs])
        for m in self.modalities:  # FW: the site's own statistics, per modality; never sent
            self.fw[m] = fit_whitening(self.train[m])
            self.train[m], self.test[m] = whiten(self.train[m], self.fw[m]), whiten(self.test[m], self.fw[m])
        self.pairs = None
        if len(self.modalities) > 1:
            a, b = self.modalities[:2]
            self.pairs = paired_rows(self.train[a], self.train[b], list(zip(self.train[a].paths, self.train[b].paths)))
        self.learner = PromptLearner(backbone, manifest["classes"], cfg.prompt, dual=False, seed=0)
        self.adapters = ModalityAdapters(manifest["modalities"], backbone.embed_dim, rank=8)
        self.calibration = SigmoidCalibration(len(manifest["classes"]))
        self.scale = backbone.logit_scale

    def logits(self, modality, pooled, tokens, text):
        pooled, _ = prepare(pooled, tokens, modality, self.adapters)
        return self.scale * F.normalize(pooled, dim=-1) @ F.normalize(text[0], dim=-1).T  # cosine scoring

    def load(self, payload):
        with torch.no_grad():
            self.learner.shared_ctx.copy_(torch.from_numpy(payload[SHARED]))
        self.adapters.load_payload(payload)

    def payload(self):
        return {SHARED: self.learner.shared_ctx.detach().numpy().copy(), **self.adapters.payload(self.modalities)}

    def train_round(self, seed):
        if not any(self.calibration.bias.detach().abs() > 0):  # the sigmoid bias, from the site's own data
            with torch.no_grad():
                text = self.learner.text_features()
                fs = self.train[self.modalities[0]]
                self.calibration.init_from(self.logits(self.modalities[0], fs.global_feats, fs.tokens, text), fs.labels)
        optimiser = torch.optim.SGD(
            [
                {"params": [self.learner.shared_ctx], "lr": 0.05},
                {"params": self.adapters.parameters(), "lr": 0.05},
                {"params": [self.calibration.bias], "lr": BIAS_LR},
            ],
            momentum=0.9,
        )
        gen = torch.Generator().manual_seed(seed)
        losses, mim_active = [], False
        for _ in range(STEPS):
            text = self.learner.text_features()
            loss = 0.0
            for m in self.modalities:
                fs = self.train[m]
                idx = torch.randperm(len(fs), generator=gen)[:BATCH]
                z = self.calibration(self.logits(m, fs.global_feats[idx], fs.tokens[idx], text))
                loss = loss + multilabel_loss(z, fs.labels[idx])
            if self.pairs is not None:
                a, b = self.modalities[:2]
                pick = torch.randperm(len(self.pairs[0]), generator=gen)[:BATCH]
                term = info_nce(
                    self.adapters.adapt(a, self.train[a].global_feats[self.pairs[0][pick]]),
                    self.adapters.adapt(b, self.train[b].global_feats[self.pairs[1][pick]]),
                )
                loss, mim_active = loss + 0.5 * term.loss, term.active
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses), mim_active

    @torch.no_grad()
    def test_scores(self):
        text = self.learner.text_features()
        out = {}
        for m in self.modalities:
            fs = self.test[m]
            out[f"{self.name}/{m}"] = (self.calibration(self.logits(m, fs.global_feats, fs.tokens, text)), fs.labels)
        return out


def test_multi_modal_multi_label_federation_learns(tmp_path, tiny_backbone):
    root = make_synthetic_mm(tmp_path / "mm", scenes=72, size=48, seed=0, progress=False)
    manifest = build_mm_manifest(
        list_dataset("bigearthnet-mm", root, progress=False), 3, "s2,s1,s2+s1", "uniform", seed=0
    )
    cfg = tiny_config()
    sites = [_Site(name, manifest, tiny_backbone, cfg) for name in manifest["sites"]]
    assert inactive_reason({s.name: s.modalities for s in sites}) is None  # site-3 holds pairs

    def pooled_f1():
        rows = metrics_by_site({k: v for s in sites for k, v in s.test_scores().items()})
        return rows["pooled"]["micro_f1"], rows["pooled"]["mAP"]

    global_payload = sites[0].payload()
    for site in sites:
        site.load(global_payload)
    history, losses = [], []
    for r in range(ROUNDS):
        updates, round_loss = [], []
        for i, site in enumerate(sites):
            site.load(global_payload)
            loss, mim_active = site.train_round(seed=100 * r + i)
            assert mim_active == (site.name == "site-3")
            round_loss.append(loss)
            updates.append((site.payload(), len(site.train[site.modalities[0]])))
        global_payload = group_average(updates)
        for site in sites:
            site.load(global_payload)
        losses.append(sum(round_loss) / len(round_loss))
        history.append(pooled_f1())
    print("loss per round", [round(x, 3) for x in losses], "pooled micro F1 / mAP", history)
    assert losses[-1] < 0.8 * losses[0]
    # Measured (seed 0, 2 cores): loss 9.9 -> 5.1, pooled micro F1 23 -> 51, mAP 36 -> 53 over 5 rounds.
    assert history[-1][0] > history[0][0] + 10  # F1 rises
    assert history[-1][1] > history[0][1] + 5  # and the ranking improves (mAP), not only the thresholds
    # Missing modality: S1-only and S2-only test sets through the global adapters, site-3's FW and bias.
    site3 = sites[2]
    text = site3.learner.text_features()

    def score(pooled, tokens):
        return site3.scale * F.normalize(pooled, dim=-1) @ F.normalize(text[0], dim=-1).T

    for m in ("s1", "s2"):
        raw = _features(
            tiny_backbone,
            manifest,
            "site-3",
            "test",
            m,
            None if m == "s2" else [b for _, b in paired_split(manifest, "site-3", "test", "s1")],
        )
        row = evaluate_modality(raw, m, score, site3.adapters, site3.calibration, site3.fw[m])
        print("missing modality:", row)
        assert row["row"] == f"{m} only" and row["samples"] == len(raw) and 0 <= row["micro_f1"] <= 100
