"""Evaluation on top of the methods: datasets, few-shot prompts, answer matching, the resumable
result store, the evaluation loop, reports and model-written paraphrases."""
