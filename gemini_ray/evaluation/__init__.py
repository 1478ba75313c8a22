"""Evaluation of a student next to its teacher: metrics (pure tensor/array maths), the evaluation sets
shipped in pip packages, and the runner behind `gemini-ray eval`. No Ray here except reading the
training corpus's held-out documents through the same reader as training."""
