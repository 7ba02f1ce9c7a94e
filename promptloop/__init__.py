"""PromptLoop: a multimodal LLM policy rewrites the prompt while a frozen diffusion model samples."""
__version__ = "0.1.0"
