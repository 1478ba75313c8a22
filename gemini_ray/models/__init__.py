"""The student and teacher models, their number formats, and the student's checkpoints."""
