"""The student and teacher models (`build`), their number formats (`numerics`), the student's checkpoints
(`checkpoint`) and its export as a plain Hugging Face directory (`export`). No Ray here."""
