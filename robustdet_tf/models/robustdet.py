"""RobustDet: SSD whose every convolution is an AAconv mixed by the AID, optionally with CFR
(docs/reference.md#total-loss-eq-5, docs/reference.md#adversarial-training).

Data flow is explicit: ``call`` runs the AID on the preprocessed image to get ``pi`` (unless the caller passes
one — the ``adc`` sub-batch re-runs clean images with the adversarial images' mixture) and hands ``pi`` to every
AAconv.  The step (``models/base.py``) is the reference's: one attack step on the held adversarial batch (test
mode), then, in ``compute_losses``, a training forward of clean + adversarial images, the AID triplet loss on their
mixtures (over the global batch under ``tf.distribute``), the ``adc`` forward, the MultiBox loss over all of them
and, with CFR, reconstruction and KL terms.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf import distribution
from robustdet_tf.behaviour import PAPER, REFERENCE, REFERENCE_OR_PAPER, checked, migrated_model_settings
from robustdet_tf.layers.cfr import CFRDecoder
from robustdet_tf.losses.aid_triplet import aid_triplet_loss
from robustdet_tf.losses.cfr import kl_divergence, reconstruction_loss
from robustdet_tf.losses.total import LOSS_WEIGHTINGS, total_loss
from robustdet_tf.models.adversarial import AdversarialBatch, AdversarialSchedule, concat_targets
from robustdet_tf.models.base import DetectionModelBase, TrainingData
from robustdet_tf.models.detector import CONV4_3_INDEX, Detector
from robustdet_tf.models.discriminator import build_discriminator
from robustdet_tf.models.ssd import SSD

HINGE_DISTANCES = {REFERENCE: "euclidean", PAPER: "js"}
"""``triplet_hinge`` → the distance ``aid_triplet_loss`` measures the hinge with."""


@keras.saving.register_keras_serializable(package="robustdet_tf")
class RobustDet(DetectionModelBase):
    """Adversarially-aware SSD300.

    Args (beyond the SSD's):
      num_kernels: K kernels per AAconv (4).
      cfr: RobustDet* — conv4_3 becomes the probabilistic CFR layer with the image decoder.
      aid_width: base width of the AID's ResNet-18 (64; smaller for tiny test models).
      decoder_width: first-layer width of the CFR decoder (512).
      aaconv_implementation: ``auto`` / ``grouped`` / ``map_fn`` / ``stacked`` (see ``layers/aaconv.py``).
      adversarial: ``AdversarialSchedule`` arguments for ``fit`` (default: MTD, PGD-20, ε = α = 8, interleaved).
      adc: size of the clean sub-batch re-run with the adversarial images' mixture; 0 = all clean images (the
        reference's default), negative = no such sub-batch.
      triplet_margin, triplet_hinge: AID loss settings: margin 0.6; the hinge's distance ``"reference"`` (squared
        Euclidean, as coded) or ``"paper"`` (the JS-type distance the paper writes).
      loss_weighting: ``"reference"`` (CFR terms /255 as coded) or ``"paper"``.
      aid_weight: the weight of L_aid inside Eq. 5's β(·) (3 in the reference); 0 is the paper's ablation
        "without L_aid": the AID still mixes the kernels but learns only through the detection loss.

    ``call(images, pi=None, training=None)`` → ``{"loc", "logits", "pi"}`` plus ``"mu"``, ``"logvar"`` with CFR and
    ``"reconstruction"`` when training with CFR.
    """

    ROUTED = True

    def __init__(
        self,
        *args,
        num_kernels: int = 4,
        cfr: bool = False,
        aid_width: int = 64,
        decoder_width: int = 512,
        aaconv_implementation: str = "auto",
        adversarial: Mapping | None = None,
        adc: int = 0,
        triplet_margin: float = 0.6,
        triplet_hinge: str = REFERENCE,
        loss_weighting: str = REFERENCE,
        aid_weight: float = 3.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        checked("model.loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
        checked("model.triplet_hinge", triplet_hinge, REFERENCE_OR_PAPER)
        self.num_kernels = int(num_kernels)
        self.cfr = bool(cfr)
        self.aid_width = int(aid_width)
        self.decoder_width = int(decoder_width)
        self.aaconv_implementation = aaconv_implementation
        self.adversarial = dict(adversarial) if adversarial is not None else {"method": "mtd"}
        self.adc = int(adc)
        self.triplet_margin = float(triplet_margin)
        self.triplet_hinge = triplet_hinge
        self.loss_weighting = loss_weighting
        self.aid_weight = float(aid_weight)
        self.seed = seed
        self.detector = Detector(
            conv="aaconv",
            num_kernels=self.num_kernels,
            aaconv_implementation=aaconv_implementation,
            cfr=self.cfr,
            nan_guard=True,
            **self.detector_kwargs(),
        )
        self.aid = build_discriminator(self.num_kernels, self.aid_width, name="aid")
        self.decoder = None
        if self.cfr:
            self.decoder = CFRDecoder(width=self.decoder_width, name="decoder")
        self.adversary = AdversarialSchedule.from_config(self.adversarial, seed=seed)
        self.seed_generator = keras.random.SeedGenerator(seed, name="triplet_seed")
        names = ["loss", "loss_l", "loss_c", "loss_aid", "triplets"]
        self._init_trackers(names + (["loss_re", "loss_kld"] if self.cfr else []))
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        super().build(input_shape)
        if self.decoder is not None and not self.decoder.built:
            size = self.feature_maps[0]
            channels = self.detector.vgg_convs[f"vgg_{CONV4_3_INDEX}"].conv_mean.filters
            self.decoder.build((None, size, size, channels))

    def mixture(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The AID's kernel mixture π ``[B, K]`` of pixel images, without running the detector (what the attacks
        that adapt to the AID read)."""
        return tf.cast(self.aid(self.preprocess(images), training=training), tf.float32)

    def call(self, images, pi=None, training=None):
        x = self.preprocess(images)
        if pi is None:
            pi = self.aid(x, training=training)
        out = self.detector(x, pi=pi, training=training)
        result = {"loc": out["loc"], "logits": out["logits"], "pi": tf.cast(pi, tf.float32)}
        if self.cfr:
            result["mu"], result["logvar"] = out["mu"], out["logvar"]
            if training:  # float32 like every output (mixed precision computes inside in bfloat16 / float16)
                result["reconstruction"] = tf.cast(self.decoder(out["cfr_features"], training=training), tf.float32)
        return result

    # -- training ---------------------------------------------------------------------------------------------
    def _adc_indices(self, num_clean: tf.Tensor, num_adv: tf.Tensor) -> tf.Tensor | None:
        """Sorted random sample of ``adc`` clean indices (all of them, in order, for ``adc = 0``)."""
        if self.adc < 0:
            return None
        limit = tf.minimum(num_clean, num_adv)
        if self.adc == 0:
            return tf.range(limit)
        keys = keras.random.uniform([limit], seed=self.seed_generator)
        return tf.sort(tf.math.top_k(keys, k=tf.minimum(self.adc, limit)).indices)

    def reconstruction_target(self, images: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        """Mean-subtracted images at the decoder's output size (300 → 300 for SSD300; resized for other sizes)."""
        target = self.preprocess(images)
        if tuple(like.shape[1:3]) != tuple(target.shape[1:3]):
            target = tf.image.resize(target, tf.shape(like)[1:3], method="bilinear", antialias=False)
        return target

    def _global_triplet_loss(self, pi: tf.Tensor, n_clean: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The AID triplet loss over the *global* batch: under ``tf.distribute`` every replica gathers all
        replicas' mixtures in one device's order (every clean image, then every adversarial one) and computes the
        loss one device would (the same random negatives: the seed state is the same on every replica): a
        whole-batch term."""
        clean = distribution.gather_replicas(pi[:n_clean])
        adv = distribution.gather_replicas(pi[n_clean:])
        labels = tf.concat([tf.zeros([tf.shape(clean)[0]], tf.int32), tf.ones([tf.shape(adv)[0]], tf.int32)], 0)
        return aid_triplet_loss(tf.concat([clean, adv], 0), labels, self.triplet_margin,
                                HINGE_DISTANCES[self.triplet_hinge],
                                seed=self.seed_generator)

    def compute_losses(self, data: TrainingData, adversarial: AdversarialBatch | None) -> dict[str, tf.Tensor]:
        """All loss terms of one step (docs/reference.md#total-loss-eq-5), inside the caller's tape."""
        clean, clean_targets = data.clean, data.clean_targets
        adv, adv_clean, adv_targets = adversarial.images, adversarial.clean, adversarial.targets
        n_clean, n_adv = tf.shape(clean)[0], tf.shape(adv)[0]
        out1 = self(tf.concat([clean, adv], 0), training=True)
        loss_aid, triplets = self._global_triplet_loss(out1["pi"], n_clean)
        outputs = [out1]
        targets = [clean_targets, adv_targets]
        recon_targets = [clean, adv_clean]
        weights = [tf.ones([n_clean + n_adv, tf.shape(out1["logits"])[1]])]
        idx = self._adc_indices(n_clean, n_adv)
        if idx is not None:
            pi_adv = tf.gather(tf.stop_gradient(out1["pi"][n_clean:]), idx)
            adc_images = tf.gather(clean, idx)
            outputs.append(self(adc_images, pi=pi_adv, training=True))
            targets.append({k: tf.gather(v, idx) for k, v in clean_targets.items()})
            recon_targets.append(adc_images)
            n_adc = tf.shape(idx)[0]
            weight = tf.cast(n_clean, tf.float32) / tf.cast(tf.maximum(n_adc, 1), tf.float32)
            weights.append(tf.fill([n_adc, tf.shape(out1["logits"])[1]], weight))
        merged = {k: tf.concat([o[k] for o in outputs], 0) for k in ("loc", "logits")}
        loss_l, loss_c = self.detection_loss(
            merged, concat_targets(*targets), weights=tf.concat(weights, 0), global_norm=True
        )
        terms = {"loss_l": loss_l, "loss_c": loss_c, "loss_aid": loss_aid, "triplets": triplets}
        if self.cfr:
            recon = tf.concat([o["reconstruction"] for o in outputs], 0)
            target = self.reconstruction_target(tf.concat(recon_targets, 0), recon)
            terms["loss_re"] = reconstruction_loss(recon, target)
            mu = tf.concat([o["mu"] for o in outputs], 0)
            logvar = tf.concat([o["logvar"] for o in outputs], 0)
            terms["loss_kld"] = kl_divergence(mu, logvar)
        terms["loss"] = total_loss(
            loss_l, loss_c, terms["loss_aid"], terms.get("loss_re"), terms.get("loss_kld"), self.loss_weighting,
            aid_weight=self.aid_weight,
        )
        return terms

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_ssd(cls, ssd: SSD, **kwargs) -> RobustDet:
        """Expand a trained SSD into RobustDet with K identical kernels per convolution
        (docs/reference.md#expanding-a-clean-ssd).

        With CFR the SSD's conv4_3 goes to ``conv_mean``; ``conv_std``, the AID and the decoder keep their init.
        Because Σπ = 1 the result computes exactly the SSD's outputs (test mode) for any mixture.
        """
        config = {k: v for k, v in ssd.get_config().items() if k not in ("name", "adversarial", "clean_mix")}
        model = cls(**{**config, **kwargs})
        ssd.build()
        model.build()
        convs = model.detector.all_convs()
        for name, plain in ssd.detector.all_convs().items():
            target = convs[name]
            if model.cfr and name == f"vgg_{CONV4_3_INDEX}":
                target = target.conv_mean
            target.set_from_plain(plain.kernel, plain.bias)
        model.detector.l2norm.weight.assign(ssd.detector.l2norm.weight)
        return model

    def get_config(self):
        return {
            **super().get_config(),
            "num_kernels": self.num_kernels,
            "cfr": self.cfr,
            "aid_width": self.aid_width,
            "decoder_width": self.decoder_width,
            "aaconv_implementation": self.aaconv_implementation,
            "adversarial": self.adversarial,
            "adc": self.adc,
            "triplet_margin": self.triplet_margin,
            "triplet_hinge": self.triplet_hinge,
            "loss_weighting": self.loss_weighting,
            "aid_weight": self.aid_weight,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        """A model saved by any version (older ``.keras`` files spell ``triplet_hinge`` ``"euclidean"``/``"js"``)."""
        return super().from_config(migrated_model_settings(config))
