"""The data side: reading and checking corpora (`corpus`, `filecheck`), cutting and pairing spans (`spans`),
mining negatives (`mining`) and the teacher's forward pass (`teacher_stage`), all plain callables; and their Ray
Data assembly: the corpus pass (`corpus_pass`), the teacher and cache-read streams (`pipeline`), the
teacher-signal cache (`cache`), exact resume (`resume`) and the stages' CPU budgets (`budgets`)."""
