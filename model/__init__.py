from model.gpt import GPT, GPTConfig, peak_flops

__all__ = ["GPT", "GPTConfig", "peak_flops"]
