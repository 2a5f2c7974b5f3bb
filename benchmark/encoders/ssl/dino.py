"""DINO (Caron et al., ICCV 2021): self-distillation; the student's prototype
distribution matches a centred, sharpened momentum teacher's.

Why lightly: `DINOProjectionHead` is solo-learn's `DINOHead` (3 GELU layers, no BN,
weight-normalised prototypes) and `DINOLoss` is solo-learn's `DINOLoss` (same teacher
temperature schedule, cross-view terms, centre update); tests/fidelity checks the loss.
The teacher sees the two global views; the student also sees `local_crops` small views
when multi-crop is on (solo-learn's CIFAR config uses none). Recipe and deviations:
docs/FIDELITY.md#ssl-dino.
"""

from __future__ import annotations

from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from pydantic import Field

from daebench.encoders.ssl.augment import AugmentParams, asymmetric_second_view
from daebench.encoders.ssl.base import SSLMethod, SSLParams, momentum_tau, register_ssl_method, tiny
from daebench.encoders.ssl.heads import MomentumPair, fp32, full_precision


class DINOParams(SSLParams):
    lr: float = Field(0.3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    proj_hidden_dim: int = Field(2048, ge=1)
    proj_output_dim: int = Field(256, ge=1, description="the bottleneck before the prototypes")
    num_prototypes: int = Field(4096, ge=2)
    student_temperature: float = Field(0.1, gt=0)
    teacher_temperature: float = Field(0.07, gt=0)
    warmup_teacher_temperature: float = Field(0.04, gt=0)
    warmup_teacher_temperature_epochs: int = Field(0, ge=0, description="epochs of linear teacher-temperature "
                                                   "warm-up (solo-learn's CIFAR config: none, the default 0)")
    freeze_last_layer_epochs: int = Field(1, ge=0)
    base_tau: float = Field(0.9995, ge=0, le=1)
    final_tau: float = Field(1.0, ge=0, le=1)
    augment2: AugmentParams | None = Field(default_factory=asymmetric_second_view)


@register_ssl_method("dino")
class DINO(SSLMethod):
    Params = DINOParams
    version = 2  # 2: no teacher-temperature warm-up in `paper` (solo-learn), LARS / schedules
    # 120 epochs with DINO's 10-epoch lr warm-up: shorter schedules sit in the uniform-teacher
    # state (loss ln(1024)) and stay under +10 kNN points on the CIFAR-10 subset (results/README.md)
    profiles = {"tiny": tiny(num_prototypes=1024, warmup_teacher_temperature_epochs=5, base_tau=0.99,
                             epochs=120, warmup_epochs=10)}

    def __init__(self, encoder, params: DINOParams) -> None:
        super().__init__(encoder, params)
        def make_head() -> DINOProjectionHead:
            return DINOProjectionHead(encoder.feature_dim, params.proj_hidden_dim, params.proj_output_dim,
                                      params.num_prototypes, freeze_last_layer=params.freeze_last_layer_epochs)

        self.head = make_head()
        self.teacher = MomentumPair(encoder, self.head, projector_copy=make_head())
        self.criterion = DINOLoss(output_dim=params.num_prototypes,
                                  warmup_teacher_temp=params.warmup_teacher_temperature,
                                  teacher_temp=params.teacher_temperature,
                                  warmup_teacher_temp_epochs=params.warmup_teacher_temperature_epochs,
                                  student_temp=params.student_temperature)

    def training_loss(self, view1, view2, local_views=()):
        teacher = [fp32(self.teacher(view1)), fp32(self.teacher(view2))]
        student = [fp32(self.head(self.encoder(v))) for v in (view1, view2, *local_views)]
        with full_precision(view1):
            return self.criterion(teacher, student, epoch=self.epoch)

    def before_optimizer_step(self) -> None:
        self.head.cancel_last_layer_gradients(self.epoch)

    def after_step(self, progress: float) -> None:
        p = self.params
        self.teacher.follow(self.encoder, self.head,
                            momentum_tau(progress, p.base_tau, p.final_tau))
