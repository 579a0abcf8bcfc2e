"""`logging` section: how often to log and where (TensorBoard by default, Weights & Biases when asked)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ft.config.base import Section


class LoggingConfig(Section):
    logging_steps: int = Field(1, ge=1, description="Log every N optimizer steps.")
    report_to: Optional[tuple[str, ...]] = Field(
        None, description="Trackers: tensorboard, wandb, none. Default: tensorboard, plus wandb when wandb_project is set."
    )
    use_tensorboard: bool = Field(True, description="Write TensorBoard logs to output_dir/runs.")
    wandb_project: Optional[str] = Field(None, description="Weights & Biases project; setting it turns wandb on.")
    wandb_entity: Optional[str] = Field(None, description="Weights & Biases team or user.")
    wandb_name: Optional[str] = Field(None, description="Weights & Biases run name.")
    wandb_run_id: Optional[str] = Field(None, description="Weights & Biases run id (to continue a run).")
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = Field(None, description="Weights & Biases mode.")
    wandb_watch: Optional[Literal["false", "gradients", "all"]] = Field(None, description="Log gradients/parameters.")
    wandb_log_model: Optional[Literal["false", "checkpoint", "end"]] = Field(None, description="Upload checkpoints.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("wandb_watch", "wandb_log_model", mode="before")
    @classmethod
    def _bool_to_str(cls, v: object) -> object:
        return "false" if v is False else v

    @property
    def trackers(self) -> tuple[str, ...]:
        if self.report_to is not None:
            return tuple(t for t in self.report_to if t != "none")
        chosen = ["tensorboard"] if self.use_tensorboard else []
        if self.wandb_project and self.wandb_mode != "disabled":
            chosen.append("wandb")
        return tuple(chosen)
