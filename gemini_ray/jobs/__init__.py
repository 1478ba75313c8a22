"""The work behind the commands, shared between them: a distillation run, making the teacher-signal cache, evaluating students, and Tune's search spaces."""
