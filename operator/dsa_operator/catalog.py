"""The model families with DeepSeek Sparse Attention and what SGLang needs for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FamilyName = Literal["deepseek-v3.2-exp", "deepseek-v3.2", "deepseek-v3.2-speciale", "glm-5"]

# Path inside the SGLang source tree; the runtime image's working directory is that tree's root.
DEEPSEEK_V32_TOOL_TEMPLATE = "./examples/chat_template/tool_chat_template_deepseekv32.jinja"


@dataclass(frozen=True)
class Family:
    name: str
    default_source: str
    layers: int
    tool_call_parser: str | None  # None: the family cannot call tools
    reasoning_parser: str
    chat_template: str | None  # needed for tool calls
    index_cache: bool  # accepts an IndexCache `index_topk_pattern`
    sglang_architecture: str  # the HF architecture SGLang keys its DSA rules on
    quantized_sources: tuple[tuple[str, str], ...] = ()  # (quantization, published checkpoint)

    def source_for(self, quantization: str) -> str | None:
        """The published checkpoint of this family in that format (None: set model.source)."""
        if quantization == "fp8":
            return self.default_source
        return dict(self.quantized_sources).get(quantization)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "deepseek-v3.2-exp",
            "deepseek-ai/DeepSeek-V3.2-Exp",
            61,
            "deepseekv31",
            "deepseek-v3",
            DEEPSEEK_V32_TOOL_TEMPLATE,
            False,
            "DeepseekV32ForCausalLM",
        ),
        Family(
            "deepseek-v3.2",
            "deepseek-ai/DeepSeek-V3.2",
            61,
            "deepseekv32",
            "deepseek-v3",
            None,
            False,
            "DeepseekV32ForCausalLM",
            # The SGLang cookbook's DeepSeek-V3.2 variants: NVFP4 (Blackwell), MXFP4 (MI300X/MI355X).
            (("nvfp4", "nvidia/DeepSeek-V3.2-NVFP4"), ("mxfp4", "amd/DeepSeek-V3.2-mxfp4")),
        ),
        Family(
            "deepseek-v3.2-speciale",
            "deepseek-ai/DeepSeek-V3.2-Speciale",
            61,
            None,
            "deepseek-v3",
            None,
            False,
            "DeepseekV32ForCausalLM",
        ),
        Family(
            "glm-5",
            "zai-org/GLM-5-FP8",
            78,
            "glm47",
            "glm45",
            None,
            True,
            "GlmMoeDsaForCausalLM",
        ),
    )
}

# IndexCache: the pattern GLM-5's authors recommend (one letter per layer).
GLM5_RECOMMENDED_INDEX_PATTERN = (
    "FFSFSSSFSSFFFSSSFFFSFSSSSSSFFSFFSFFSSFFFFFFSFFFFFSFFSSSSSSFSFFFSFSSSFSFFSFFSSS"
)
