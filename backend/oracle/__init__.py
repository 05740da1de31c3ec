"""Oracle priors: the Animate124 job run against priors that know a ground-truth animated
object (truth.py: the object and its renders; priors.py: the priors in the real layout;
bench.py: the job and its scores, `animate4d bench oracle`)."""
