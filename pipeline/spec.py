"""The codeground API: TrainingRun and Sandbox (group ``codeground.dev``, version ``v1alpha1``).

These pydantic models are the **one source of truth** of the API. ``codeground crds`` generates
``crds/*.yaml`` (and the chart's copy) from them (see :mod:`codeground.pipeline.crdgen`); the operator
and ``codeground run`` parse documents with the same models; the cross-field rules below are declared
once as :class:`Rule` objects that carry both the CEL expression the API server evaluates and the
Python predicate ``codeground validate`` evaluates (a test feeds the same bad documents to both).

Field names are camelCase on the wire (YAML/JSON, like every Kubernetes API) and snake_case in Python.
Every field has a description, so ``kubectl explain trainingrun.spec.stages`` teaches the API.

What this module does not do: read files (see :mod:`codeground.pipeline.specio`) or talk to a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "codeground.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Names end up in Job, Pod and label values (<= 63 chars): run (40) + stage (16) + attempt suffix fit.
RUN_NAME_MAX = 40
STAGE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

StageType = Literal["distill", "sft", "grpo", "evaluate"]
RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
StagePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, declared once: CEL for the API server, a predicate for the local validator.

    ``check`` receives the model instance the rule is attached to and returns True when valid.
    ``field`` is the path (relative to that object) the error is reported at.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str = ""


Quantity = Annotated[
    int | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def _builtin_templates() -> tuple[str, ...]:
    from importlib import resources

    return tuple(sorted(f.name.removesuffix(".md") for f in resources.files("codeground.pipeline.templates").iterdir()
                        if f.name.endswith(".md")))


BUILTIN_TEMPLATES = _builtin_templates()  # the prompt templates shipped in pipeline/templates


def _template_rule() -> Rule:
    names = ", ".join(f"'{n}'" for n in BUILTIN_TEMPLATES)
    return Rule(
        f"!has(self.template) || self.template.endsWith('.md') || self.template in [{names}]",
        f"template must be one of {', '.join(BUILTIN_TEMPLATES)} (pipeline/templates) or a path to a .md file",
        lambda p: p.template is None or p.template.endswith(".md") or p.template in BUILTIN_TEMPLATES,
        "template",
    )


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, rules attached."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=False
    )
    rules: ClassVar[tuple[Rule, ...]] = ()


# ----------------------------------------------------------------------------------------- common
class Resources(ApiModel):
    """Compute a stage's pod asks for; requests equal limits."""

    gpus: int = Field(0, ge=0, le=64, description="NVIDIA GPUs per node (nvidia.com/gpu).")
    cpu: Quantity = Field("2", description="CPU cores per node, a Kubernetes quantity such as 8 or 500m.")
    memory: Quantity = Field("8Gi", description="Memory per node, a Kubernetes quantity such as 64Gi.")
    nodes: int = Field(1, ge=1, le=64, description="Nodes for this stage; >1 runs an indexed Job with torchrun.")


class ModelRef(ApiModel):
    """A model to load: a hub id, an s3:// URI or a local path."""

    name: str = Field(..., min_length=1, max_length=1024, description="Hub id (org/name), s3://bucket/key or a local path.")
    revision: str | None = Field(None, max_length=128, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(
        None, max_length=512, description="GGUF file inside the model folder; loaded through transformers' GGUF support."
    )


class VllmServing(ApiModel):
    """Serve the teacher with vLLM inside the stage's own pod."""

    gpus: int = Field(1, ge=1, le=64, description="GPUs for the in-stage vLLM server (tensor parallel size).")
    max_model_len: int = Field(32768, ge=256, le=1048576, description="vLLM --max-model-len.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")


class TeacherSpec(ApiModel):
    """The model that writes the trajectories the distill stage keeps."""

    model: ModelRef = Field(..., description="The teacher model.")
    endpoint: str | None = Field(
        None, max_length=2048, description="Base URL of an OpenAI-compatible server (…/v1). Mutually exclusive with vllm."
    )
    api_key_secret: str | None = Field(
        None, max_length=253, description="Secret whose key OPENAI_API_KEY authenticates to the endpoint."
    )
    vllm: VllmServing | None = Field(None, description="Serve the teacher with vLLM inside the distill pod.")
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.endpoint) && has(self.vllm))",
            "set either endpoint or vllm, not both",
            lambda t: not (t.endpoint is not None and t.vllm is not None),
            "endpoint",
        ),
    )


class DatasetRef(ApiModel):
    """A named set of problems with reference answers."""

    name: str = Field(..., pattern=STAGE_NAME_PATTERN, max_length=63, description="Name stages use to refer to this dataset.")
    source: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description=(
            "builtin:NAME for a set shipped with codeground (gsm8k_test, math500, aime24, aime25, amc23, "
            "math_train_numeric_3k, dapo_math_17k, arith_train, arith_test), s3://bucket/key.jsonl, a hub "
            "dataset id (hf:org/name) or a local JSONL path."
        ),
    )
    split: str = Field("train", max_length=64, description="Split of a hub dataset.")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="Use only the first N problems.")
    problem_field: str = Field("problem", max_length=128, description="Field holding the problem text.")
    answer_field: str = Field("answer", max_length=128, description="Field holding the reference answer.")
    decontaminate: bool = Field(
        True, description="Drop problems that also appear in any evaluate stage's benchmarks (training sets only)."
    )
    decontaminate_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "A training problem counts as a copy of an evaluation problem when its words match with at least "
            "this similarity (difflib ratio; LaTeX punctuation ignored) and it has the same set of numbers; "
            "1 drops exact copies only."
        ),
    )


class SandboxLimits(ApiModel):
    """Limits every interpreter session runs under."""

    timeout_seconds: float = Field(10.0, gt=0, le=3600, description="Wall-clock limit of one code cell.")
    memory: Quantity = Field("1Gi", description="Memory limit of one session.")
    max_processes: int = Field(64, ge=1, le=4096, description="Processes and threads one session may run.")
    max_output_bytes: int = Field(65536, ge=256, le=64 << 20, description="Output kept per cell; the rest is cut with a marker.")
    max_sessions: int = Field(64, ge=1, le=4096, description="Sessions one replica holds; more get HTTP 429.")
    session_idle_seconds: float = Field(600.0, gt=0, le=86400, description="Idle sessions are closed after this long.")


class SandboxRef(ApiModel):
    """Where stages run code: a Sandbox resource (cluster) or inline limits (local runs)."""

    name: str | None = Field(None, max_length=253, description="Name of a Sandbox in the run's namespace.")
    limits: SandboxLimits | None = Field(None, description="Inline limits for `codeground run` on one machine.")


# ----------------------------------------------------------------------------------------- stages
class DistillFilters(ApiModel):
    """Which teacher trajectories the distill stage keeps (all must hold)."""

    require_correct: bool = Field(True, description="Keep only trajectories whose final answer is correct.")
    require_all_code_runs: bool = Field(True, description="Keep only trajectories whose every code block ran without error.")
    min_code_blocks: int = Field(3, ge=0, le=1000, description="Keep only trajectories with at least this many code blocks.")
    max_natural_language_fraction: float = Field(
        0.5, ge=0, le=1, description="Keep only trajectories whose natural-language share of tokens is below this."
    )


class DistillParams(ApiModel):
    """Teacher answers problems with few-shot prompts; code runs; filters keep the good trajectories."""

    dataset: str = Field(..., max_length=63, description="Name of a dataset in spec.datasets.")
    shots: int = Field(3, ge=0, le=8, description="Worked examples in the prompt.")
    template: str | None = Field(
        None, max_length=512,
        description="Prompt template: a name in pipeline/templates (code_reasoning, thinc) or a .md path; default code_reasoning.",
    )
    samples_per_problem: int = Field(1, ge=1, le=256, description="Trajectories sampled per problem.")
    max_tool_calls: int = Field(20, ge=1, le=1000, description="Code blocks executed per trajectory.")
    max_tokens: int = Field(4096, ge=16, le=1048576, description="Tokens generated per trajectory (model and interpreter).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    filters: DistillFilters = Field(default_factory=DistillFilters, description="Which trajectories to keep.")
    dedupe: bool = Field(True, description="Drop trajectories whose text duplicates a kept one.")
    rules: ClassVar[tuple[Rule, ...]] = (_template_rule(),)


class SFTParams(ApiModel):
    """Supervised fine-tuning on kept trajectories; loss only on the model's own tokens."""

    learning_rate: float = Field(7e-6, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    batch_size: int = Field(16, ge=1, le=65536, description="Global batch size; reached with gradient accumulation.")
    micro_batch_size: int = Field(1, ge=1, le=4096, description="Sequences per device per forward pass.")
    epochs: float = Field(3, gt=0, le=1000, description="Passes over the kept trajectories.")
    max_length: int = Field(32768, ge=32, le=1048576, description="Longest sequence in tokens; longer ones are dropped.")
    shots: int | None = Field(
        None, ge=0, le=8,
        description=(
            "Train under the student's prompt: every trajectory is re-prompted with this many worked examples "
            "of `template` (its solution is kept as is). Unset, and template unset too: train on the prompt "
            "the teacher was given. Later grpo stages use the same prompt."
        ),
    )
    template: str | None = Field(
        None, max_length=512,
        description="Template of the student's prompt (a name in pipeline/templates or a .md path); setting it re-prompts like shots (3 by default).",
    )
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.batchSize % self.microBatchSize == 0",
            "batchSize must be a multiple of microBatchSize",
            lambda p: p.batch_size % p.micro_batch_size == 0,
            "batchSize",
        ),
        _template_rule(),
    )


class CurriculumPhase(ApiModel):
    """One phase of the GRPO curriculum."""

    steps: int = Field(..., ge=1, le=1_000_000, description="Optimizer steps in this phase.")
    max_length: int = Field(..., ge=16, le=1048576, description="Response budget in tokens (model and interpreter).")
    max_tool_calls: int = Field(..., ge=0, le=1000, description="Code blocks executed per rollout.")
    drop_solved: bool = Field(False, description="Drop prompts solved in all samples during the previous phase.")


class GRPOParams(ApiModel):
    """GRPO with multi-turn code rollouts and a verifiable reward."""

    dataset: str = Field(..., max_length=63, description="Name of a dataset in spec.datasets.")
    learning_rate: float = Field(1e-6, gt=0, le=1, description="Learning rate (constant).")
    num_generations: int = Field(16, ge=2, le=1024, description="Samples per prompt (the group).")
    prompts_per_step: int = Field(32, ge=1, le=65536, description="Prompts per optimizer step.")
    temperature: float = Field(1.0, gt=0, le=2, description="Rollout sampling temperature.")
    kl_coefficient: float = Field(0.0, ge=0, description="KL penalty; 0 loads no reference model (the recipe).")
    entropy_coefficient: float = Field(0.0, ge=0, description="Entropy bonus; 0 in the recipe.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="TRL loss_type.")
    checkpoint_every: int = Field(50, ge=1, le=1_000_000, description="Save a checkpoint every N steps (and at each phase end).")
    require_grounded: bool = Field(
        False,
        description=(
            "Reward 1 only for a correct answer that also appears in an interpreter output (the grounding "
            "metric's test); a correct answer the model fixed by hand after its code printed something else "
            "scores 0. Off: the math checker alone (the recipe)."
        ),
    )
    curriculum: list[CurriculumPhase] = Field(
        ..., min_length=1, max_length=32, description="Phases run in order, each with its own budget."
    )
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!self.curriculum[0].dropSolved",
            "the first phase has no previous phase to drop solved prompts from",
            lambda p: not p.curriculum[0].drop_solved,
            "curriculum[0].dropSolved",
        ),
    )


class EvaluateParams(ApiModel):
    """avg@k, pass@k, maj@k and behaviour metrics on benchmarks."""

    benchmarks: list[Annotated[str, Field(max_length=63)]] = Field(
        ..., min_length=1, max_length=32, description="Names of datasets in spec.datasets."
    )
    samples: int = Field(16, ge=1, le=1024, description="Samples per problem (k).")
    shots: int = Field(3, ge=0, le=8, description="Worked examples in the prompt (keep the distill stage's format).")
    template: str | None = Field(
        None, max_length=512,
        description="Prompt template: a name in pipeline/templates (code_reasoning, thinc) or a .md path; default code_reasoning.",
    )
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature.")
    max_tool_calls: int = Field(20, ge=0, le=1000, description="Code blocks executed per trajectory.")
    max_tokens: int = Field(4096, ge=16, le=1048576, description="Tokens per trajectory (model and interpreter).")
    rules: ClassVar[tuple[Rule, ...]] = (_template_rule(),)


def _has_params_of(stage_type: str) -> Callable[[Any], bool]:
    return lambda s: s.type != stage_type or getattr(s, stage_type) is not None


def _params_only_for(stage_type: str) -> Callable[[Any], bool]:
    return lambda s: getattr(s, stage_type) is None or s.type == stage_type


class StageSpec(ApiModel):
    """One stage of the pipeline; stages run in order, each from the previous stage's artifacts."""

    name: str = Field(..., min_length=1, max_length=16, pattern=STAGE_NAME_PATTERN, description="Unique stage name (DNS label, ≤16 chars).")
    type: StageType = Field(..., description="What the stage does.")
    resources: Resources = Field(default_factory=Resources, description="Compute per node.")
    image: str | None = Field(None, max_length=512, description="Container image; defaults to the operator's trainer image.")
    distill: DistillParams | None = Field(None, description="Parameters when type is distill.")
    sft: SFTParams | None = Field(None, description="Parameters when type is sft.")
    grpo: GRPOParams | None = Field(None, description="Parameters when type is grpo.")
    evaluate: EvaluateParams | None = Field(None, description="Parameters when type is evaluate.")
    rules: ClassVar[tuple[Rule, ...]] = tuple(
        Rule(
            f"self.type != '{t}' || has(self.{t})",
            f"a stage of type {t} needs its {t} parameters",
            _has_params_of(t),
            t,
        )
        for t in ("distill", "grpo", "evaluate")
    ) + tuple(
        Rule(
            f"!has(self.{t}) || self.type == '{t}'",
            f"{t} parameters are only allowed on a stage of type {t}",
            _params_only_for(t),
            t,
        )
        for t in ("distill", "sft", "grpo", "evaluate")
    )

    def params(self) -> ApiModel:
        """The parameters of this stage's type, with defaults where the spec left them out."""
        value = getattr(self, self.type)
        if value is None and self.type == "sft":
            return SFTParams()
        assert value is not None, f"stage {self.name}: missing {self.type} parameters"
        return value


class ArtifactsSpec(ApiModel):
    """Where every stage's outputs go."""

    uri: str = Field("runs", min_length=1, max_length=2048, description="s3://bucket/prefix or a local path.")
    endpoint: str | None = Field(None, max_length=2048, description="S3 endpoint URL (MinIO); AWS when empty.")
    credentials_secret: str | None = Field(
        None, max_length=253, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


class TrainingRunSpec(ApiModel):
    """What to train, from what data, in which stages."""

    model: ModelRef = Field(..., description="The base model the first training stage starts from.")
    teacher: TeacherSpec | None = Field(None, description="The teacher; required by distill stages.")
    datasets: list[DatasetRef] = Field(..., min_length=1, max_length=64, description="Named datasets stages refer to.")
    sandbox: SandboxRef = Field(default_factory=SandboxRef, description="Where code runs.")
    stages: list[StageSpec] = Field(..., min_length=1, max_length=16, description="Stages, run in order.")
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec, description="Artifact store.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for sampling and training.")
    deterministic: bool = Field(
        False,
        description=(
            "Generate rollouts in lockstep (each turn of every live trajectory in one batch, rows in a fixed "
            "order) so the same spec, seed and hardware give the same trajectories and scores. Costs the "
            "overlap of generation with code execution."
        ),
    )
    suspend: bool = Field(False, description="Stop the current stage; resume later from its last checkpoint.")
    backoff_limit: int = Field(2, ge=0, le=20, description="Retries of a failed stage before the run fails.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=31_536_000, description="Delete the run's pods and Jobs this long after it finishes."
    )
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.stages.all(a, self.stages.exists_one(b, b.name == a.name))",
            "stage names must be unique",
            lambda s: len({st.name for st in s.stages}) == len(s.stages),
            "stages",
        ),
        Rule(
            "self.datasets.all(a, self.datasets.exists_one(b, b.name == a.name))",
            "dataset names must be unique",
            lambda s: len({d.name for d in s.datasets}) == len(s.datasets),
            "datasets",
        ),
        Rule(
            "!self.stages.exists(s, s.type == 'distill') || has(self.teacher)",
            "a distill stage needs spec.teacher",
            lambda s: s.teacher is not None or all(st.type != "distill" for st in s.stages),
            "teacher",
        ),
        Rule(
            "self.stages.all(s, !has(s.distill) || self.datasets.exists(d, d.name == s.distill.dataset))"
            " && self.stages.all(s, !has(s.grpo) || self.datasets.exists(d, d.name == s.grpo.dataset))"
            " && self.stages.all(s, !has(s.evaluate) || s.evaluate.benchmarks.all(b, self.datasets.exists(d, d.name == b)))",
            "every dataset a stage names must be declared in spec.datasets",
            lambda s: all(n in {d.name for d in s.datasets} for n in s.referenced_datasets()),
            "stages",
        ),
    )

    def referenced_datasets(self) -> list[str]:
        names: list[str] = []
        for st in self.stages:
            if st.distill:
                names.append(st.distill.dataset)
            if st.grpo:
                names.append(st.grpo.dataset)
            if st.evaluate:
                names.extend(st.evaluate.benchmarks)
        return names

    def stage(self, name: str) -> StageSpec:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)

    def dataset(self, name: str) -> DatasetRef:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)


# ----------------------------------------------------------------------------------------- status
class Condition(ApiModel):
    """A Kubernetes condition: a stable reason a program can switch on, a message a person reads."""

    type: str = Field(..., max_length=64, description="Ready, Succeeded, Failed, Suspended, SandboxReady, SpecValid.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", max_length=128, description="CamelCase reason, stable across releases.")
    message: str = Field("", max_length=4096, description="Human-readable detail.")
    last_transition_time: str | None = Field(None, max_length=64, description="RFC 3339 time of the last change.")
    observed_generation: int | None = Field(None, ge=0, description="Generation this condition was computed from.")


class StageStatus(ApiModel):
    """What was observed of one stage."""

    name: str = Field(..., max_length=63, description="Stage name.")
    phase: StagePhase = Field("Pending", description="Pending, Running, Succeeded, Failed or Skipped.")
    attempts: int = Field(0, ge=0, description="Attempts started so far.")
    start_time: str | None = Field(None, max_length=64, description="When the current attempt started.")
    completion_time: str | None = Field(None, max_length=64, description="When the stage finished.")
    artifact_uri: str | None = Field(None, alias="artifactURI", max_length=4096, description="URI of the stage's manifest.json.")
    progress: str | None = Field(None, max_length=64, description="Progress of the running stage, e.g. 120/800.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Numbers the stage reported (reward, accuracy, ...).")
    message: str | None = Field(None, max_length=4096, description="Why the stage failed, when it did.")


class TrainingRunStatus(ApiModel):
    """What the operator (or `codeground run`) observed."""

    phase: RunPhase = Field("Pending", description="Pending, Running, Succeeded, Failed or Suspended.")
    current_stage: str | None = Field(None, max_length=63, description="The stage running now, or the last one.")
    progress: str | None = Field(None, max_length=64, description="Progress of the current stage, e.g. 120/800.")
    reward: float | None = Field(None, description="Latest mean reward reported by a running grpo stage.")
    stages: list[StageStatus] = Field(default_factory=list, description="Per-stage status, in spec order.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Succeeded, Failed, Suspended, ...")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation this status reflects.")


class ObjectMeta(ApiModel):
    """The subset of metadata codeground reads; the rest is kept but not validated."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    name: str = Field(..., min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Object name.")
    namespace: str | None = Field(None, max_length=63, description="Namespace.")


class TrainingRun(ApiModel):
    """A training pipeline: distill → sft → grpo → evaluate, one stage after another."""

    kind_name: ClassVar[str] = "TrainingRun"
    plural: ClassVar[str] = "trainingruns"
    api_version: Literal["codeground.dev/v1alpha1"] = Field("codeground.dev/v1alpha1", description="codeground.dev/v1alpha1")
    kind: Literal["TrainingRun"] = Field("TrainingRun", description="TrainingRun")
    metadata: ObjectMeta
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None
    # Enforced through the CRD's metadata schema (the only metadata constraint CRDs may declare).
    name_max_length: ClassVar[int] = RUN_NAME_MAX


class SandboxResources(ApiModel):
    """Requests (= limits) of one Sandbox replica."""

    cpu: Quantity = Field("2", description="CPU per replica.")
    memory: Quantity = Field("4Gi", description="Memory per replica.")
    scratch: Quantity = Field("1Gi", description="Size of the replica's scratch volume (emptyDir in memory).")


class SandboxSpec(ApiModel):
    """A pool of gVisor-isolated Python interpreter pods that stages send code to."""

    runtime_class_name: str = Field("gvisor", max_length=253, description="RuntimeClass of the pods (gvisor isolates them).")
    replicas: int = Field(2, ge=0, le=1000, description="Base pool size; `kubectl scale` changes it.")
    max_replicas: int = Field(16, ge=1, le=1000, description="Upper bound when the operator sizes the pool for a running stage.")
    image: str | None = Field(None, max_length=512, description="Sandbox image; defaults to the chart's sandbox image.")
    resources: SandboxResources = Field(default_factory=SandboxResources, description="Per replica.")
    limits: SandboxLimits = Field(default_factory=SandboxLimits, description="Per session.")
    network: Literal["none"] = Field("none", description="Network access of session code: none.")
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.replicas <= self.maxReplicas",
            "replicas must not exceed maxReplicas",
            lambda s: s.replicas <= s.max_replicas,
            "replicas",
        ),
    )


class SandboxStatus(ApiModel):
    """What the operator observed of the Sandbox's pods."""

    replicas: int = Field(0, ge=0, description="Pods the Deployment has.")
    ready_replicas: int = Field(0, ge=0, description="Pods ready to take sessions.")
    selector: str | None = Field(None, max_length=1024, description="Label selector of the pods (scale subresource).")
    endpoint: str | None = Field(None, max_length=1024, description="URL stages use to reach the pool.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, ...")
    observed_generation: int | None = Field(None, ge=0, description="The spec generation this status reflects.")


class Sandbox(ApiModel):
    """An interpreter pool."""

    kind_name: ClassVar[str] = "Sandbox"
    plural: ClassVar[str] = "sandboxes"
    api_version: Literal["codeground.dev/v1alpha1"] = Field("codeground.dev/v1alpha1", description="codeground.dev/v1alpha1")
    kind: Literal["Sandbox"] = Field("Sandbox", description="Sandbox")
    metadata: ObjectMeta
    spec: SandboxSpec = Field(default_factory=SandboxSpec)
    status: SandboxStatus | None = None
    name_max_length: ClassVar[int] = 63  # the name of its Service and Deployment


KINDS: dict[str, type[ApiModel]] = {"TrainingRun": TrainingRun, "Sandbox": Sandbox}
