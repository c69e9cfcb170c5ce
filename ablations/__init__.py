"""Ablations reproducing the BLIP-2 / InstructBLIP / LLaVA comparisons at small scale."""
