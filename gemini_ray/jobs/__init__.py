"""The work behind the commands, shared between them: a distillation run (`distill_run`), making the
teacher-signal cache (`labelling`), evaluating students (`evaluate`), and Tune's search spaces (`search`)."""
