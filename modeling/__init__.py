"""Hub remote code of MME-JD, shipped in the wheel as `mme_jd.modeling`."""
